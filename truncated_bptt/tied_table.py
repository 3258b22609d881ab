"""The table the input embedding and the adaptive softmax share, as one autograd node (CPU training).

With tied weights and a single table (``div_val == 1``, or no tail clusters) both ends of the
model read one ``[n_token, d_embed]`` table: the embedding gathers the segment's rows, the softmax
slices it into its clusters. Left to autograd, each use builds its own table-sized gradient (the
embedding's backward a zero-filled table with the rows added in, the softmax's the clusters' weight
gradients concatenated) and the engine then adds the two: four passes over a table-sized tensor
(34 MB at WikiText-2's 33k words and d_embed 256) where one write is needed.

:func:`gather_and_split` is that one node. Its forward gathers the rows and hands out the cluster
slices (views of the table, :class:`TiedOutputWeights`). The softmax's products with those slices
(:func:`tied_linear`, from ``projected_adaptive_softmax._linear``) compute their weight gradients
straight into the node's table-sized gradient, made uninitialised on first use; the node's backward
zeroes the rows of a cluster no target fell in, copies in a cluster gradient that arrived some other
way (a second product of the same slice: autograd adds the two), and adds the embedding's rows in
place. The same sums as autograd's, in another order: the gradients agree to float rounding
(tests/test_tied_table.py, against autograd's own).

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
        ctx.table_grad = None  # made by the first cluster product's backward (_ClusterLinear)
        ctx.claimed = set()  # the clusters whose rows a product's backward has written
        ctx.set_materialize_grads(False)  # a cluster without targets sends no gradient
        return (F.embedding(tokens, table), *table.split(sizes))

    @staticmethod
    def backward(ctx, rows_grad: Optional[Tensor], *cluster_grads: Optional[Tensor]):
        (tokens,) = ctx.saved_tensors
        # dropped here, so that autograd can keep it as .grad (and a retained graph's next
        # backward starts afresh)
        grad, ctx.table_grad, ctx.claimed = ctx.table_grad, None, set()
        if grad is None:
            like = rows_grad if rows_grad is not None else next(g for g in cluster_grads if g is not None)
            grad = like.new_empty(sum(ctx.sizes), like.size(-1))
        for part, cluster_grad in zip(grad.split(ctx.sizes), cluster_grads):
            if cluster_grad is None:
                part.zero_()
            elif not _is_view_of(cluster_grad, part):  # else it was written in place already
                part.copy_(cluster_grad)
        if rows_grad is not None:
            grad.index_add_(0, tokens.reshape(-1), rows_grad.reshape(-1, grad.size(1)))
        return grad, None, None


def _is_view_of(a: Tensor, b: Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


class _ClusterLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` for a cluster slice a :class:`_GatherAndSplit` node handed out;
    its backward writes the weight's gradient straight into that cluster's rows of the node's
    table-sized gradient, so the node need not copy it there."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], node, cluster: int):
        ctx.save_for_backward(x, weight)
        ctx.node, ctx.cluster, ctx.has_bias = node, cluster, bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_out.mm(weight) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            slot = _claim_rows(ctx.node, ctx.cluster, grad_out, x.size(1))
            grad_weight = grad_out.t().mm(x) if slot is None else torch.mm(grad_out.t(), x, out=slot)
        grad_bias = grad_out.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None, None


def _claim_rows(node, cluster: int, like: Tensor, width: int) -> Optional[Tensor]:
    """Cluster ``cluster``'s rows of ``node``'s table-sized gradient (made now if need be), the
    first time they are asked for; None after (a second product of one cluster gets its own
    tensor, which autograd adds and the node then copies)."""
    if node.table_grad is None:
        node.table_grad = like.new_empty(sum(node.sizes), width)
    if cluster in node.claimed:
        return None
    node.claimed.add(cluster)
    return node.table_grad.split(node.sizes)[cluster]


def tied_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Optional[Tensor]:
    """``F.linear(x [N, d], weight, bias)`` through :class:`_ClusterLinear` if ``weight`` is a
    cluster slice from a :func:`gather_and_split` node (with gradients on); else None."""
    node = weight.grad_fn
    if not torch.is_grad_enabled() or x.dim() != 2 or not isinstance(node, _GatherAndSplit._backward_cls):
        return None
    return _ClusterLinear.apply(x, weight, bias, node, weight.output_nr - 1)


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
