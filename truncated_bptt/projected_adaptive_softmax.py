"""Projected adaptive softmax (Grave et al. 2017) with Transformer-XL's parameterisation.

The head scores the ``cutoffs[0]`` most frequent tokens plus one entry per tail cluster
(``cluster_weight``/``cluster_bias``); ``log p(w) = log p_head(cluster(w)) + log p_cluster(w)`` for a
tail token. Hidden states are first projected by ``out_projs[i]`` (``[d_proj, d_emb_i]``, used as
``h @ P``) when the cluster's width differs from ``d_proj``. With ``div_val == 1`` all clusters slice
one ``Linear(d_embed, n_token)`` and each cluster may still have its own projection, as the original.

:meth:`target_log_probs` is target-indexed (never ``N x V``); :meth:`log_probs` gives full rows for
generation. Logits are normalised in fp32.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from truncated_bptt import packed_weights, tied_table
from truncated_bptt.adaptive_input import cluster_bounds, cluster_dims


@torch.jit.unused
def _tied_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Optional[Tensor]:
    # (eager only: the TorchScript scorer never trains)
    return tied_table.tied_linear(x, weight, bias)


@torch.jit.unused
def _packed_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    # (eager only: the TorchScript scorer never holds packed weights)
    return packed_weights.packed_linear(x, weight, bias)


def _linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``F.linear(x, weight, bias)``: x ``[N, d]``, weight ``[V, d]`` -> ``[N, V]``.

    A weight packed for oneDNN (:mod:`truncated_bptt.packed_weights`; inference passes on CPU)
    goes to oneDNN's inner product. With gradients, a cluster slice of the tied table
    (:mod:`truncated_bptt.tied_table`) goes to a product whose backward writes the weight's
    gradient into the table's gradient directly.

    Without autograd (scoring, generation) it is computed as ``(weight @ x^T)^T``: for the few rows
    those have (one segment's tail-cluster targets, one generated token), CPU BLAS runs that layout
    1.2-7x faster than ``F.linear``'s (benchmarks/softmax_layout.py); a single row is doubled because
    the matrix-vector kernel it would otherwise get is slower still. Training keeps ``F.linear``,
    whose backward is faster. GPUs are indifferent to the layout.
    """
    if weight.is_mkldnn:
        return _packed_linear(x, weight, bias)
    if torch.is_grad_enabled() and not torch.jit.is_scripting():
        out = _tied_linear(x, weight, bias)
        if out is not None:
            return out
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

    def cluster_sizes(self) -> List[int]:
        """Number of tokens of each cluster, head first (summing to ``n_token``)."""
        return [hi - lo for lo, hi in zip(self.bounds[:-1], self.bounds[1:])]

    def cluster_params(self, weights: Optional[Sequence[Tensor]] = None
                       ) -> List[Tuple[Tensor, Tensor, Optional[Tensor]]]:
        """(weight, bias, projection or None) of every cluster (the head's without the cluster rows).
        ``weights``: the clusters' weights as a tied-table node handed them out (tied_table.py),
        instead of slicing ``out_layers[0].weight`` here."""
        if weights is not None:
            if len(self.out_layers) != 1 or len(weights) != self.n_clusters + 1:
                raise ValueError(f"{len(weights)} cluster weights for a softmax with "
                                 f"{self.n_clusters + 1} clusters in {len(self.out_layers)} tables")
            biases = self.out_layers[0].bias.split(self.cluster_sizes(), dim=0)
        elif self.div_val == 1:
            # One split per forward (not slicing per cluster): its backward assembles a single
            # gradient for the shared table instead of a zero-filled full-size one per cluster.
            weights = self.out_layers[0].weight.split(self.cluster_sizes(), dim=0)
            biases = self.out_layers[0].bias.split(self.cluster_sizes(), dim=0)
        else:
            weights = [layer.weight for layer in self.out_layers]
            biases = [layer.bias for layer in self.out_layers]
        params = []
        for i, (weight, bias) in enumerate(zip(weights, biases)):
            proj = self.out_projs[i] if len(self.out_projs) > 0 else None
            params.append((weight, bias, proj))
        return params

    def tail_rows(self):
        """The head's extra rows (weight ``[n_clusters, d_embed]``, bias), or (None, None)."""
        if self.n_clusters == 0:
            return None, None
        return self.cluster_weight, self.cluster_bias

    def packed_clusters(self, pack_tails: bool = True) -> List[Tuple[Tensor, Tensor, Optional[Tensor]]]:
        """:meth:`cluster_params` detached, the head's weight packed for oneDNN together with its
        tail-cluster rows, the tail clusters' weights packed too if ``pack_tails``
        (:class:`~truncated_bptt.packed_weights.PackedSoftmax`)."""
        clusters = self.cluster_params()
        weight, bias, projection = clusters[0]
        tail_weight, tail_bias = self.tail_rows()
        if tail_weight is not None and tail_bias is not None:
            weight, bias = torch.cat([weight, tail_weight]), torch.cat([bias, tail_bias])
        clusters[0] = (weight, bias, projection)
        return [(packed_weights.pack(w) if i == 0 or pack_tails else w.detach(), b.detach().contiguous(),
                 None if p is None else p.detach()) for i, (w, b, p) in enumerate(clusters)]

    def target_log_probs(self, hidden: Tensor, target: Tensor,
                         packed: Optional[packed_weights.PackedSoftmax] = None,
                         weights: Optional[Sequence[Tensor]] = None) -> Tensor:
        """hidden ``[N, d_proj]``, target ``[N]`` token ids -> fp32 ``[N]`` of ``log p(target)``;
        ``packed``: this softmax's :meth:`packed_clusters` (inference only); ``weights``: see
        :meth:`cluster_params`."""
        if packed is not None:
            return adaptive_target_log_probs(hidden, target, packed.clusters, None, None, self.bounds)
        return adaptive_target_log_probs(hidden, target, self.cluster_params(weights), *self.tail_rows(),
                                         self.bounds)

    def log_probs(self, hidden: Tensor,
                  packed: Optional[packed_weights.PackedSoftmax] = None) -> Tensor:
        """hidden ``[N, d_proj]`` -> fp32 ``[N, n_token]`` full log-probabilities."""
        if packed is not None:
            return adaptive_log_probs(hidden, packed.clusters, None, None, self.bounds)
        return adaptive_log_probs(hidden, self.cluster_params(), *self.tail_rows(), self.bounds)


# The functions below are the softmax's maths, shared with the TorchScript scorer
# (truncated_bptt/torchscript_export.py); ``clusters[i]`` is (weight, bias, projection or None) of
# cluster i, ``tail_weight``/``tail_bias`` the head's rows standing for the tail clusters.
def cluster_logits(hidden: Tensor, weight: Tensor, bias: Tensor, projection: Optional[Tensor],
                   tail_weight: Optional[Tensor] = None,
                   tail_bias: Optional[Tensor] = None) -> Tensor:
    """Logits ``[N, cluster size (+ tail clusters for the head)]``, at least fp32."""
    if projection is not None:
        hidden = torch.matmul(hidden, projection)
    if tail_weight is not None and tail_bias is not None:
        # the head scores its tokens and one entry per tail cluster; concatenate whichever is
        # smaller, the logits (few rows: evaluation, generation) or the weights (training)
        if hidden.size(0) < weight.size(0):
            logits = torch.cat([_linear(hidden, weight, bias), _linear(hidden, tail_weight, tail_bias)],
                               dim=-1)
        else:
            logits = F.linear(hidden, torch.cat([weight, tail_weight]), torch.cat([bias, tail_bias]))
    else:
        logits = _linear(hidden, weight, bias)
    if logits.dtype == torch.float16 or logits.dtype == torch.bfloat16:
        logits = logits.float()
    return logits


def adaptive_target_log_probs(hidden: Tensor, target: Tensor,
                              clusters: List[Tuple[Tensor, Tensor, Optional[Tensor]]],
                              tail_weight: Optional[Tensor], tail_bias: Optional[Tensor],
                              bounds: List[int]) -> Tensor:
    """hidden ``[N, d]``, target ``[N]`` -> fp32 ``[N]`` log p(target): the head for all rows, each
    tail cluster only for the rows whose target is in it (never ``N x V`` logits)."""
    cluster = torch.zeros_like(target)
    for cutoff in bounds[1:-1]:
        cluster += (target >= cutoff).long()
    # Head class of each target: the token itself, or the entry standing for its cluster.
    head_class = torch.where(cluster == 0, target, bounds[1] - 1 + cluster)
    weight, bias, projection = clusters[0]
    head = cluster_logits(hidden, weight, bias, projection, tail_weight, tail_bias)
    out = -F.cross_entropy(head, head_class, reduction="none")
    for i in range(1, len(clusters)):
        idx = (cluster == i).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        weight, bias, projection = clusters[i]
        # hidden[idx], not index_select: the latter's CPU backward is pathologically slow.
        tail = -F.cross_entropy(cluster_logits(hidden[idx], weight, bias, projection),
                                target.index_select(0, idx) - bounds[i], reduction="none")
        out = out.index_add(0, idx, tail)
    return out


def adaptive_log_probs(hidden: Tensor, clusters: List[Tuple[Tensor, Tensor, Optional[Tensor]]],
                       tail_weight: Optional[Tensor], tail_bias: Optional[Tensor],
                       bounds: List[int]) -> Tensor:
    """hidden ``[N, d]`` -> fp32 ``[N, V]`` full log-probabilities (generation-sized N only)."""
    weight, bias, projection = clusters[0]
    head = torch.log_softmax(cluster_logits(hidden, weight, bias, projection, tail_weight, tail_bias),
                             dim=-1)
    shortlist = bounds[1]
    parts = [head[:, :shortlist]]
    for i in range(1, len(clusters)):
        weight, bias, projection = clusters[i]
        tail = torch.log_softmax(cluster_logits(hidden, weight, bias, projection), dim=-1)
        parts.append(head[:, shortlist + i - 1].unsqueeze(1) + tail)
    return torch.cat(parts, dim=1)
