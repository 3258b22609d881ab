"""Scoring consecutive segments of the same streams in one forward (inference passes).

An inference pass scores a stream segment by segment, each over the memory the previous ones left:
the last ``mem_len`` positions of every layer's input. Those inputs do not depend on the segments
that come later, so a layer can compute them for several consecutive segments (a *block*) at once:
the block's projections and feed-forward run as one matrix product over all its positions instead
of one per segment, and the softmax reads its weights once per block. Each segment then attends over
its own window of the layer's keys and values, ``[memory before it; itself]``, which is exactly the
memory, keys and relative distances it has when scored alone. Only the order of the floating-point
sums differs (to rounding).

Segments whose windows have the same shape form a :class:`SegmentGroup` (in a pass with full
memory, every segment of a block but a shorter last one), which shares one attention context. The
indexed kernel (fp32 on CPU) attends its segments one at a time over slices of the block's keys and
values laid out head by head once per layer; the other kernels attend a group in one batched call
over its windows. Used by :meth:`TransformerXLDecoder.forward_segments
<truncated_bptt.transformer_xl_model.TransformerXLDecoder.forward_segments>` when fairseq-eval-lm
hands the model several segments per step (``--eval-segments-per-step``, docs/task.md).
"""
import dataclasses
from dataclasses import dataclass
from typing import List, NamedTuple

import torch
from torch import Tensor

from truncated_bptt.relative_attention import (AttentionContext, RelativeMultiHeadAttention,
                                               indexed_window_attention)


@dataclass(frozen=True)
class SegmentGroup:
    """``count`` consecutive segments of a block, each of ``qlen`` tokens over ``mlen`` memory positions.

    query_start: the first segment's first position in the block (positions ``[0, N)``).
    key_start: the first segment's first key in ``[memory; block]`` (``M + N`` positions); each
        later segment's window starts ``qlen`` further.
    """
    query_start: int
    count: int
    qlen: int
    mlen: int
    key_start: int

    @property
    def query_end(self) -> int:
        return self.query_start + self.count * self.qlen

    @property
    def window(self) -> int:
        """Keys each segment attends over: its memory, then itself."""
        return self.mlen + self.qlen

    def queries(self, block: Tensor) -> Tensor:
        """``[B, N, ...]`` of the block -> the group's ``[B * count, qlen, ...]``."""
        rows = block[:, self.query_start:self.query_end]
        return rows.reshape(block.size(0) * self.count, self.qlen, *block.shape[2:])

    def windows(self, keys_values: Tensor) -> Tensor:
        """``[B, M + N, ...]`` over ``[memory; block]`` -> every segment's window
        ``[B * count, mlen + qlen, ...]`` (a strided view of the buffer when ``B`` is 1)."""
        span = keys_values[:, self.key_start:self.key_start + (self.count - 1) * self.qlen + self.window]
        windows = span.unfold(1, self.window, self.qlen)  # [B, count, ..., window]
        windows = windows.movedim(-1, 2)  # [B, count, window, ...]
        return windows.reshape(keys_values.size(0) * self.count, self.window, *keys_values.shape[2:])


class SegmentAttention(NamedTuple):
    """What one layer needs to attend a group: its segments, their attention context (mask,
    encodings, position index of shape ``(qlen, mlen)``) and the layer's position keys for them."""
    group: SegmentGroup
    context: AttentionContext
    position_keys: Tensor


def plan_segments(memory_len: int, block_len: int, segment_length: int, mem_len: int) -> List[SegmentGroup]:
    """The segments of a block of ``block_len`` positions after ``memory_len`` memory positions,
    ``segment_length`` each (the last may be shorter), grouped by window shape.

    Segment 0 sees the memory it is given; each later one the last ``mem_len`` positions before it
    (fewer at the start of a stream), which is the memory scoring the segments one by one leaves.
    """
    if segment_length <= 0 or block_len <= 0:
        raise ValueError(f"a block needs positive lengths, got block {block_len}, segment {segment_length}")
    groups: List[SegmentGroup] = []
    start = 0
    while start < block_len:
        qlen = min(segment_length, block_len - start)
        before = memory_len + start  # positions of [memory; block] before this segment
        mlen = memory_len if start == 0 else min(mem_len, before)
        last = groups[-1] if groups else None
        if last is not None and last.qlen == qlen and last.mlen == mlen:
            groups[-1] = dataclasses.replace(last, count=last.count + 1)
        else:
            groups.append(SegmentGroup(start, 1, qlen, mlen, before - mlen))
        start += qlen
    return groups


def block_attention(attn: RelativeMultiHeadAttention, h: Tensor, keys_values: Tensor,
                    segments: List[SegmentAttention], r_w_bias: Tensor, r_r_bias: Tensor) -> Tensor:
    """``attn`` over consecutive segments at once: h ``[B, N, d_model]`` their inputs ->
    ``[B, N, d_model]``, what ``attn`` gives each segment over its memory.

    keys_values ``[B, M + N, 2, n_head, d_head]``: the first ``M`` positions hold the memory's; the
    block's are written into the rest. segments: the block's groups in order, with their contexts
    and this layer's position keys. The indexed kernel (fp32 off CUDA) lays the keys/values out
    head-major once and attends segment by segment (:func:`indexed_window_attention`); the other
    kernels attend each group in one batched call over copies of its windows.
    """
    q, kv = attn.queries_keys_values(h)
    keys_values[:, keys_values.size(1) - h.size(1):].copy_(kv)
    bsz, n_head, d_head = h.size(0), attn.n_head, attn.d_head
    head_major = None
    parts = []
    for segment in segments:
        group, context = segment.group, segment.context
        if context.position_index is not None and attn.indexed(q):
            if head_major is None:  # [B*H, Dh, M+N] and [B*H, M+N, Dh] (a view at batch 1)
                k, v = keys_values.unbind(2)
                head_major = (k.permute(0, 2, 3, 1).reshape(bsz * n_head, d_head, -1),
                              v.transpose(1, 2).reshape(bsz * n_head, -1, d_head))
            out = indexed_window_attention(
                q[:, group.query_start:group.query_end], *head_major,
                segment.position_keys.view(-1, n_head, d_head), r_w_bias, r_r_bias,
                context.position_index, group.qlen, group.key_start)
        else:
            k, v = group.windows(keys_values).unbind(2)
            out = attn.attend(group.queries(q), k, v, segment.position_keys, r_w_bias, r_r_bias,
                              context.mask, context.position_index)
        parts.append(out.reshape(bsz, group.count * group.qlen, n_head * d_head))
    return attn.output(h, parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
