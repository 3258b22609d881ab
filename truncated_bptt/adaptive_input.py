"""Adaptive input embeddings (Baevski & Auli 2019) as Transformer-XL's ``AdaptiveEmbedding`` has them.

The vocabulary (fairseq dictionary order: the 4 specials bos/pad/eos/unk, then words by decreasing
frequency) is split at ``cutoffs`` into a head and tail clusters. Cluster ``i`` embeds into
``d_embed // div_val**i`` dimensions and is projected to ``d_proj``; with ``div_val == 1`` there is
one table and a projection only when ``d_embed != d_proj``. Outputs are scaled by ``sqrt(d_proj)``.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cluster_bounds(n_token: int, cutoffs: List[int]) -> List[int]:
    """``[0, *cutoffs, n_token]``: cluster ``i`` holds token ids ``[bounds[i], bounds[i + 1])``."""
    return [0] + list(cutoffs) + [n_token]


def cluster_dims(d_embed: int, n_clusters: int, div_val: int) -> List[int]:
    """Embedding width of each of the ``n_clusters`` clusters (head first)."""
    return [d_embed // (div_val ** i) for i in range(n_clusters)]


class AdaptiveInput(nn.Module):
    """``[B, T]`` token ids -> ``[B, T, d_proj]`` embeddings (already scaled by ``sqrt(d_proj)``)."""

    def __init__(self, n_token: int, d_embed: int, d_proj: int, cutoffs: List[int], div_val: int = 1):
        super().__init__()
        self.n_token, self.d_embed, self.d_proj, self.div_val = n_token, d_embed, d_proj, div_val
        self.bounds = cluster_bounds(n_token, cutoffs)
        self.emb_scale = d_proj ** 0.5
        self.emb_layers = nn.ModuleList()
        self.emb_projs = nn.ParameterList()
        if div_val == 1:
            self.emb_layers.append(nn.Embedding(n_token, d_embed))
            if d_proj != d_embed:
                self.emb_projs.append(nn.Parameter(torch.empty(d_proj, d_embed)))
        else:
            dims = cluster_dims(d_embed, len(self.bounds) - 1, div_val)
            for i, d_emb_i in enumerate(dims):
                self.emb_layers.append(nn.Embedding(self.bounds[i + 1] - self.bounds[i], d_emb_i))
                self.emb_projs.append(nn.Parameter(torch.empty(d_proj, d_emb_i)))

    def project_rows(self, rows: Tensor) -> Tensor:
        """Rows already gathered from the single table (``div_val == 1``) ``[B, T, d_embed]`` ->
        the embeddings ``[B, T, d_proj]`` :meth:`forward` gives for their tokens."""
        projection = self.emb_projs[0] if len(self.emb_projs) > 0 else None
        return project_and_scale(rows, projection, self.emb_scale)

    def forward(self, tokens: Tensor) -> Tensor:
        """``[B, T]`` token ids -> ``[B, T, d_proj]``."""
        tables = [layer.weight for layer in self.emb_layers]
        projections: List[Optional[Tensor]] = list(self.emb_projs) if len(self.emb_projs) > 0 else [None]
        return adaptive_embedding(tokens, tables, projections, self.bounds, self.d_proj, self.emb_scale)


def adaptive_embedding(tokens: Tensor, tables: List[Tensor], projections: List[Optional[Tensor]],
                       bounds: List[int], d_proj: int, scale: float) -> Tensor:
    """``[B, T]`` token ids -> ``[B, T, d_proj]``, scaled by ``scale`` (TorchScript-compatible).

    One table (``div_val == 1``): ``tables[0][ids] @ projections[0].T`` (no projection if None).
    Else cluster ``i`` embeds ids ``[bounds[i], bounds[i + 1])`` with ``tables[i]`` and projects with
    ``projections[i]``.
    """
    if len(tables) == 1:
        return project_and_scale(F.embedding(tokens, tables[0]), projections[0], scale)
    flat = tokens.reshape(-1)
    out = torch.zeros(flat.numel(), d_proj, dtype=tables[0].dtype, device=tokens.device)
    for i, table in enumerate(tables):
        idx = ((flat >= bounds[i]) & (flat < bounds[i + 1])).nonzero().squeeze(1)
        projection = projections[i]
        if projection is not None and idx.numel() > 0:
            emb_i = F.linear(F.embedding(flat.index_select(0, idx) - bounds[i], table), projection)
            out = out.index_copy(0, idx, emb_i.to(out.dtype))
    return (out * scale).view(tokens.size(0), tokens.size(1), d_proj)


def project_and_scale(rows: Tensor, projection: Optional[Tensor], scale: float) -> Tensor:
    """Single-table rows ``[..., d_embed]`` -> ``[..., d_proj]``: projected (if any), scaled."""
    if projection is not None:
        rows = F.linear(rows, projection)
    return rows * scale
