"""Projected adaptive softmax (Grave et al. 2017) with Transformer-XL's parameterisation.

The head scores the ``cutoffs[0]`` most frequent tokens plus one entry per tail cluster
(``cluster_weight``/``cluster_bias``); ``log p(w) = log p_head(cluster(w)) + log p_cluster(w)`` for a
tail token. Hidden states are first projected by ``out_projs[i]`` (``[d_proj, d_emb_i]``, used as
``h @ P``) when the cluster's width differs from ``d_proj``. With ``div_val == 1`` all clusters slice
one ``Linear(d_embed, n_token)`` and each cluster may still have its own projection, as the original.

:meth:`target_log_probs` is target-indexed (never ``N x V``); :meth:`log_probs` gives full rows for
generation. Logits are normalised in fp32.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from truncated_bptt.adaptive_input import cluster_bounds, cluster_dims


def _linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``F.linear(x, weight, bias)``: x ``[N, d]``, weight ``[V, d]`` -> ``[N, V]``.

    Without autograd (scoring, generation) it is computed as ``(weight @ x^T)^T``: for the few rows
    those have (one segment's tail-cluster targets, one generated token), CPU BLAS runs that layout
    1.2-7x faster than ``F.linear``'s (benchmarks/softmax_layout.py); a single row is doubled because
    the matrix-vector kernel it would otherwise get is slower still. Training keeps ``F.linear``,
    whose backward is faster. GPUs are indifferent to the layout.
    """
    if torch.is_grad_enabled() or x.device.type != "cpu":
        return F.linear(x, weight, bias)
    rows = x.size(0)
    if rows == 1:
        x = torch.cat([x, x])
    out = torch.addmm(bias.unsqueeze(1), weight, x.t()).t()
    return out[:rows]


class ProjectedAdaptiveSoftmax(nn.Module):
    def __init__(self, n_token: int, d_embed: int, d_proj: int, cutoffs: List[int], div_val: int = 1):
        super().__init__()
        self.n_token, self.d_embed, self.d_proj, self.div_val = n_token, d_embed, d_proj, div_val
        self.bounds = cluster_bounds(n_token, cutoffs)
        self.n_clusters = len(cutoffs)  # number of tail clusters
        self.shortlist = self.bounds[1]
        if self.n_clusters > 0:
            self.cluster_weight = nn.Parameter(torch.empty(self.n_clusters, d_embed))
            self.cluster_bias = nn.Parameter(torch.empty(self.n_clusters))
        self.out_layers = nn.ModuleList()
        self.out_projs = nn.ParameterList()
        if div_val == 1:
            if d_proj != d_embed:
                for _ in range(self.n_clusters + 1):
                    self.out_projs.append(nn.Parameter(torch.empty(d_proj, d_embed)))
            self.out_layers.append(nn.Linear(d_embed, n_token))
        else:
            for i, d_emb_i in enumerate(cluster_dims(d_embed, self.n_clusters + 1, div_val)):
                self.out_projs.append(nn.Parameter(torch.empty(d_proj, d_emb_i)))
                self.out_layers.append(nn.Linear(d_emb_i, self.bounds[i + 1] - self.bounds[i]))

    def _cluster_params(self) -> List[Tuple[Tensor, Tensor, Optional[Tensor]]]:
        """(weight, bias, projection or None) of every cluster (the head's without the cluster rows)."""
        if self.div_val == 1:
            # One split per forward (not slicing per cluster): its backward assembles a single
            # gradient for the shared table instead of a zero-filled full-size one per cluster.
            sizes = [hi - lo for lo, hi in zip(self.bounds[:-1], self.bounds[1:])]
            weights = self.out_layers[0].weight.split(sizes, dim=0)
            biases = self.out_layers[0].bias.split(sizes, dim=0)
        else:
            weights = [layer.weight for layer in self.out_layers]
            biases = [layer.bias for layer in self.out_layers]
        params = []
        for i, (weight, bias) in enumerate(zip(weights, biases)):
            proj = self.out_projs[i] if len(self.out_projs) > 0 else None
            params.append((weight, bias, proj))
        return params

    def _logits(self, hidden: Tensor, params: Tuple[Tensor, Tensor, Optional[Tensor]],
                head: bool = False) -> Tensor:
        """Logits ``[N, size of the cluster (+ n_clusters for the head)]``, at least fp32."""
        weight, bias, proj = params
        if proj is not None:
            hidden = torch.matmul(hidden, proj)
        if head and self.n_clusters > 0:
            # the head scores its tokens and one entry per tail cluster; concatenate whichever is
            # smaller, the logits (few rows: evaluation, generation) or the weights (training)
            if hidden.size(0) < weight.size(0):
                logits = torch.cat([_linear(hidden, weight, bias),
                                    _linear(hidden, self.cluster_weight, self.cluster_bias)], dim=-1)
            else:
                logits = F.linear(hidden, torch.cat([weight, self.cluster_weight]),
                                  torch.cat([bias, self.cluster_bias]))
        else:
            logits = _linear(hidden, weight, bias)
        return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits

    def target_log_probs(self, hidden: Tensor, target: Tensor) -> Tensor:
        """hidden ``[N, d_proj]``, target ``[N]`` token ids -> fp32 ``[N]`` of ``log p(target)``.

        Computes the head for all rows and each tail cluster only for the rows whose target is in it.
        """
        cluster = torch.zeros_like(target)
        for cutoff in self.bounds[1:-1]:
            cluster += (target >= cutoff).long()
        # Head class of each target: the token itself, or the entry standing for its cluster.
        head_class = torch.where(cluster == 0, target, self.shortlist - 1 + cluster)
        params = self._cluster_params()
        out = -F.cross_entropy(self._logits(hidden, params[0], head=True), head_class, reduction="none")
        for i in range(1, self.n_clusters + 1):
            idx = (cluster == i).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            # hidden[idx], not index_select: the latter's CPU backward is pathologically slow.
            tail = -F.cross_entropy(
                self._logits(hidden[idx], params[i]),
                target.index_select(0, idx) - self.bounds[i],
                reduction="none",
            )
            out = out.index_add(0, idx, tail)
        return out

    def log_probs(self, hidden: Tensor) -> Tensor:
        """hidden ``[N, d_proj]`` -> fp32 ``[N, n_token]`` full log-probabilities."""
        params = self._cluster_params()
        head = torch.log_softmax(self._logits(hidden, params[0], head=True), dim=-1)
        parts = [head[:, : self.shortlist]]
        for i in range(1, self.n_clusters + 1):
            cluster_lp = head[:, self.shortlist + i - 1].unsqueeze(1)
            parts.append(cluster_lp + torch.log_softmax(self._logits(hidden, params[i]), dim=-1))
        return torch.cat(parts, dim=1)
