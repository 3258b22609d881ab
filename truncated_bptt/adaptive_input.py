"""Adaptive input embeddings (Baevski & Auli 2019) as Transformer-XL's ``AdaptiveEmbedding`` has them.

The vocabulary (fairseq dictionary order: the 4 specials bos/pad/eos/unk, then words by decreasing
frequency) is split at ``cutoffs`` into a head and tail clusters. Cluster ``i`` embeds into
``d_embed // div_val**i`` dimensions and is projected to ``d_proj``; with ``div_val == 1`` there is
one table and a projection only when ``d_embed != d_proj``. Outputs are scaled by ``sqrt(d_proj)``.
"""
from typing import List

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

    def forward(self, tokens: Tensor) -> Tensor:
        if self.div_val == 1:
            emb = self.emb_layers[0](tokens)
            if len(self.emb_projs) > 0:
                emb = F.linear(emb, self.emb_projs[0])
            return emb * self.emb_scale
        flat = tokens.reshape(-1)
        weight = self.emb_projs[0]
        out = weight.new_zeros(flat.numel(), self.d_proj)
        for i, layer in enumerate(self.emb_layers):
            lo, hi = self.bounds[i], self.bounds[i + 1]
            idx = ((flat >= lo) & (flat < hi)).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            emb_i = F.linear(layer(flat.index_select(0, idx) - lo), self.emb_projs[i])
            out = out.index_copy(0, idx, emb_i.to(out.dtype))
        return (out * self.emb_scale).view(*tokens.shape, self.d_proj)
