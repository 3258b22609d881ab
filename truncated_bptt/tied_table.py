"""The table the input embedding and the adaptive softmax share, as one autograd node (CPU training).

With tied weights and ``div_val == 1`` both ends of the model read one ``[n_token, d_embed]``
table: the embedding gathers the segment's rows, the softmax slices it into its clusters. Left to
autograd, each use builds its own full-size gradient (the embedding's backward a zero-filled table
with the rows added in, the softmax's the cluster gradients concatenated) and the engine then adds
the two: three passes over a table-sized tensor (34 MB at WikiText-2's 33k words and d_embed 256)
beyond the one that is needed.

:func:`gather_and_split` is that one node. Its forward gathers the rows and hands out the cluster
slices (views of the table, :class:`TiedOutputWeights`); its backward writes the cluster gradients
once into an uninitialised table-sized gradient (zeros only for a cluster no target fell in) and
adds the embedding's rows into it in place. Same sums as autograd's, in another order: the
gradients agree to float rounding (tests/test_tied_table.py).

The decoder uses it in training on CPU only: on CUDA ``index_add_`` accumulates with atomics (the
order of a row's additions, hence its rounding, changes from run to run), whereas the embedding's
own CUDA backward is deterministic; and a GPU passes over the table in microseconds.
The slices reach the softmax through the forward's output (``net_output[1]["output_weights"]``),
so a softmax can only use the slices of the forward that made its features.
"""
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


class TiedOutputWeights(NamedTuple):
    """The softmax clusters' weights ``[size_i, d_embed]`` (head first), as slices of the shared table
    handed out by one :func:`gather_and_split` node: gradients through them reach that node."""
    clusters: Tuple[Tensor, ...]


class _GatherAndSplit(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: Tensor, tokens: Tensor, sizes: List[int]):
        ctx.save_for_backward(tokens)
        ctx.sizes = sizes
        ctx.set_materialize_grads(False)  # a cluster without targets sends no gradient
        return (F.embedding(tokens, table), *table.split(sizes))

    @staticmethod
    def backward(ctx, rows_grad: Optional[Tensor], *cluster_grads: Optional[Tensor]):
        (tokens,) = ctx.saved_tensors
        like = rows_grad if rows_grad is not None else next(g for g in cluster_grads if g is not None)
        grad = like.new_empty(sum(ctx.sizes), like.size(-1))
        for part, cluster_grad in zip(grad.split(ctx.sizes), cluster_grads):
            if cluster_grad is None:
                part.zero_()
            else:
                part.copy_(cluster_grad)
        if rows_grad is not None:
            grad.index_add_(0, tokens.reshape(-1), rows_grad.reshape(-1, grad.size(1)))
        return grad, None, None


def gather_and_split(table: Tensor, tokens: Tensor, sizes: List[int]) -> Tuple[Tensor, TiedOutputWeights]:
    """table ``[n_token, d]``, tokens ``[B, T]``, sizes: the clusters' sizes (summing to n_token) ->
    ``(table[tokens] [B, T, d], TiedOutputWeights)``, both with gradients to ``table`` through one node."""
    if sum(sizes) != table.size(0):
        raise ValueError(f"cluster sizes {sizes} do not add up to the table's {table.size(0)} rows")
    rows, *clusters = _GatherAndSplit.apply(table, tokens, list(sizes))
    return rows, TiedOutputWeights(tuple(clusters))


def output_weights_of(net_output) -> Optional[TiedOutputWeights]:
    """The :class:`TiedOutputWeights` a decoder's forward put beside its features, or None."""
    extra = net_output[1] if isinstance(net_output, (tuple, list)) and len(net_output) > 1 else None
    weights = extra.get("output_weights") if isinstance(extra, dict) else None
    return weights if isinstance(weights, TiedOutputWeights) else None
