"""Analytic FLOP count of a Transformer-XL language model step (pure Python: runs in any environment).

What is counted are the *model* FLOPs: the multiply-adds the maths of the model needs, whatever an
implementation really executes (like "model FLOPs utilisation"). A multiply-add counts as 2 FLOPs.
Element-wise work (layer norm, softmax, dropout, GELU/ReLU, biases, the relative shift) is left out:
it is a few percent of the matmuls at these sizes and no matmul peak applies to it.

Notation, for one segment of a batch: B streams, T query tokens, M memory tokens, K = M + T keys,
L layers, d = d_model, H heads of size h (so A = H*h), f = d_inner.

Per layer (forward):

    queries        2 * B*T * d*A
    keys, values   2 * 2 * B*K * d*A      (memory rows are projected again: they are cached layer inputs)
    positions      2 * K * d*A            (the relative position embeddings r, shared by the batch)
    scores         2 * 2 * B*H * T*K * h  (content term (q+u)k and position term (q+v)r, before the shift)
    weighted sum   2 * B*H * T*K * h
    output         2 * B*T * A*d
    feed-forward   2 * 2 * B*T * d*f

Output layer, a projected adaptive softmax with target indexing (only what the loss needs):

    head           2 * B*T * d_0 * (c_0 + n_tail)        every token: shortlist logits + one per tail
    tail i         2 * n_i * (d*d_i [if d_i != d] + d_i*V_i)   only the n_i tokens whose target is in it

with c_0 the first cutoff, V_i the size of tail cluster i, d_i = d_embed // div_val**i its width, d_0 the
head's width (a projection d -> d_0 costs 2*B*T*d*d_0 when d_0 != d). The input embedding is a lookup.

A training step (forward + backward) is counted as 3x the forward: the backward computes the
gradients of the inputs and of the weights of every matmul, each as costly as the forward one.
"""
from dataclasses import dataclass
from typing import List, Sequence


@dataclass
class XLShape:
    n_layer: int
    d_model: int
    n_head: int
    d_head: int
    d_inner: int
    vocab: int
    cutoffs: Sequence[int]
    d_embed: int = 0  # 0: same as d_model
    div_val: int = 1

    def cluster_bounds(self) -> List[int]:
        """[0, c_0, c_1, ..., V]: cutoffs at or above the vocabulary size are dropped, as both models do."""
        return [0] + [c for c in self.cutoffs if c < self.vocab] + [self.vocab]


def layer_forward_flops(s: XLShape, batch: int, tgt_len: int, mem_len: int) -> float:
    """FLOPs of one layer's forward over a [batch, tgt_len] segment attending to mem_len memory tokens."""
    B, T, K = batch, tgt_len, mem_len + tgt_len
    d, H, h, f = s.d_model, s.n_head, s.d_head, s.d_inner
    A = H * h
    return (
        2 * B * T * d * A          # queries
        + 2 * 2 * B * K * d * A    # keys and values
        + 2 * K * d * A            # relative position embeddings
        + 2 * 2 * B * H * T * K * h  # content and position scores
        + 2 * B * H * T * K * h    # attention-weighted values
        + 2 * B * T * A * d        # output projection
        + 2 * 2 * B * T * d * f    # position-wise feed-forward
    )


def softmax_forward_flops(s: XLShape, tokens_per_cluster: Sequence[int]) -> float:
    """FLOPs of the target-indexed adaptive softmax; tokens_per_cluster[i]: targets in cluster i."""
    bounds = s.cluster_bounds()
    n_clusters = len(bounds) - 1
    if len(tokens_per_cluster) != n_clusters:
        raise ValueError(f"need {n_clusters} per-cluster token counts, got {len(tokens_per_cluster)}")
    d = s.d_model
    d_embed = s.d_embed or s.d_model
    n_all = sum(tokens_per_cluster)
    flops = 0.0
    for i in range(n_clusters):
        d_i = d_embed // (s.div_val ** i)
        size_i = bounds[i + 1] - bounds[i]
        rows = n_all if i == 0 else tokens_per_cluster[i]
        width = size_i + (n_clusters - 1 if i == 0 else 0)  # the head also scores each tail cluster
        proj = d * d_i if d_i != d else 0
        flops += 2 * rows * (proj + d_i * width)
    return flops


def forward_flops(s: XLShape, batch: int, tgt_len: int, mem_len: int,
                  tokens_per_cluster: Sequence[int]) -> float:
    """FLOPs of one forward of the whole model over a segment (tokens_per_cluster sums to batch*tgt_len)."""
    return s.n_layer * layer_forward_flops(s, batch, tgt_len, mem_len) + softmax_forward_flops(
        s, tokens_per_cluster
    )


def train_step_flops(s: XLShape, batch: int, tgt_len: int, mem_len: int,
                     tokens_per_cluster: Sequence[int]) -> float:
    """FLOPs of one forward + backward: 3x the forward."""
    return 3 * forward_flops(s, batch, tgt_len, mem_len, tokens_per_cluster)


def eval_forward_flops(s: XLShape, n_scored: int, streams: int, tgt_len: int, mem_len: int,
                       tokens_per_cluster: Sequence[int]) -> float:
    """FLOPs of scoring a split (fairseq-eval-lm): `streams` parallel streams cut into segments of
    tgt_len tokens; a stream's memory fills up over its first segments (min(mem_len, tokens seen)).
    tokens_per_cluster: targets of each cluster over the whole split (its sum is the number of
    tokens processed); n_scored: the targets that were scored (the softmax is scaled to them)."""
    n_tokens = sum(tokens_per_cluster)
    per_stream = -(-n_tokens // streams)
    layers = 0.0
    start = 0
    while start < per_stream:
        t = min(tgt_len, per_stream - start)
        layers += layer_forward_flops(s, streams, t, min(mem_len, start))
        start += t
    scale = n_scored / n_tokens if n_tokens else 0.0
    return s.n_layer * layers + scale * softmax_forward_flops(s, tokens_per_cluster)


def tokens_per_cluster(targets: Sequence[int], shape: XLShape) -> List[int]:
    """Count how many target ids fall in each adaptive-softmax cluster."""
    bounds = shape.cluster_bounds()
    counts = [0] * (len(bounds) - 1)
    for t in targets:
        for i in range(len(counts)):
            if t < bounds[i + 1]:
                counts[i] += 1
                break
    return counts
