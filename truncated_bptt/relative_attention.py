"""Transformer-XL's relative positional multi-head attention (Dai et al. 2019, section 3.3).

For a query at key position ``p`` and a key at position ``j`` (distance ``p - j``), head by head::

    score(p, j) = [(q_p + u) . k_j  +  (q_p + v) . R_{p - j}] / sqrt(d_head)

where ``k_j`` covers ``[memory; current segment]``, ``R`` are sinusoidal relative encodings projected
per layer (``r_net``), and ``u``/``v`` are the learned global content/position biases
(``r_w_bias``/``r_r_bias``). The position term is computed for all (query, encoding) pairs with one
matmul and then realigned to (query, key) pairs by the pad-and-reshape "relative shift", so no Python
loop over positions and no gather are needed.

Layouts are batch-first: hidden states ``[B, T, d_model]``, memory ``[B, M, d_model]``,
``K = M + T`` keys; scores ``[B, n_head, T, K]``.

Everything here is written for ``torch.jit.script`` as well as eager use: the TorchScript scorer
(:mod:`truncated_bptt.torchscript_export`) runs these same functions and modules.
"""
import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Masked scores are filled with this finite value (softmax runs in fp32, where exp() of it is 0).
# Finite on purpose: a fully masked row then gives a uniform distribution instead of NaNs, and no
# -inf ever meets half-precision arithmetic.
MASK_VALUE = -1e30


class AttentionContext(NamedTuple):
    """What every layer of one segment attends with (the same for all layers).

    encodings: ``[K + 1, d_model]`` position encodings (:func:`position_encodings`).
    mask: bool ``[T, K]``, True where a query must not see a key; None when nothing is hidden.
    r_w_bias, r_r_bias: ``[n_head, d_head]`` ``u``/``v`` shared by all layers (``--tie-r``), or None
        when every layer owns its own.
    position_index: int64 ``[T, K]`` (:func:`position_index`) for :func:`indexed_relative_attention`
        in inference passes that are not in half precision; None elsewhere.
    """
    encodings: Tensor
    mask: Optional[Tensor]
    r_w_bias: Optional[Tensor]
    r_r_bias: Optional[Tensor]
    position_index: Optional[Tensor]


def relative_positions(klen: int, clamp_len: int, device: Optional[torch.device] = None) -> Tensor:
    """Relative distances ``[klen]`` in descending order ``klen-1, ..., 0``, clipped at ``clamp_len``.

    Entry ``c`` is the distance that encoding row ``c`` stands for; ``clamp_len <= 0`` means no clamp.
    """
    pos = torch.arange(klen - 1, -1, -1, device=device, dtype=torch.float32)
    if clamp_len > 0:
        pos = pos.clamp(max=float(clamp_len))
    return pos


def sinusoidal_encoding(positions: Tensor, d_model: int) -> Tensor:
    """Transformer sinusoids ``[len(positions), d_model]`` = ``[sin(pos * f), cos(pos * f)]`` (fp32)."""
    steps = torch.arange(0.0, float(d_model), 2.0, device=positions.device)
    inv_freq = 1.0 / torch.pow(10000.0, steps / d_model)
    angles = torch.outer(positions.float(), inv_freq)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def position_encodings(klen: int, d_model: int, clamp_len: int, device: Optional[torch.device] = None,
                       dtype: Optional[torch.dtype] = None, distinct: bool = False) -> Tensor:
    """``[klen + 1, d_model]``: a zero row (the pad :func:`rel_shift` relies on), then the encodings
    of distances ``klen-1, ..., 0`` (clamped).

    With ``distinct`` and a clamp that leaves fewer distinct distances (``clamp_len + 1 < klen``),
    only ``[clamp_len + 2, d_model]``: the zero row, then distances ``clamp_len, ..., 0``. The
    attention then scores the position term against those rows only and repeats the score of
    ``clamp_len`` for the longer distances (:func:`expand_clamped_positions`), which gives the same
    scores with fewer FLOPs (not with dropout on the encodings: each row would get its own mask).
    """
    rows = klen
    if distinct and 0 < clamp_len < klen - 1:
        rows = clamp_len + 1
    enc = sinusoidal_encoding(relative_positions(rows, clamp_len, device), d_model)
    enc = F.pad(enc, [0, 0, 1, 0])
    return enc if dtype is None else enc.to(dtype)


def expand_clamped_positions(position: Tensor, klen: int) -> Tensor:
    """Position scores ``[..., P + 1]`` against the encodings of :func:`position_encodings`
    (column 0 the pad, then distances ``P-1 .. 0``) -> ``[..., klen + 1]``, contiguous: the score of
    the clamped distance (column 1) repeated for the distances beyond it."""
    missing = klen + 1 - position.size(-1)
    if missing <= 0:
        return position
    shape = list(position.shape[:-1]) + [missing]
    return torch.cat([position[..., :1], position[..., 1:2].expand(shape), position[..., 1:]], dim=-1)


def attention_mask(qlen: int, mlen: int, same_length: bool, mem_len: int,
                   device: Optional[torch.device] = None, same_length_mask: str = "authors") -> Tensor:
    """Boolean mask ``[qlen, mlen + qlen]``, True where query ``i`` must NOT see key ``j``.

    Query ``i`` sits at key position ``p = mlen + i``. Causal: keys ``j > p`` are masked.
    ``same_length`` additionally masks the keys far behind the query, so every query sees the same
    number of keys (fewer only where fewer exist); ``same_length_mask`` says how many:

    - "authors" (the authors' and HuggingFace's code): distances ``p - j >= mem_len`` are masked, so
      a query sees its ``mem_len`` most recent keys including itself. With a full memory
      (``mlen == mem_len``) the oldest memory key is therefore never seen.
    - "nvidia" (NVIDIA DeepLearningExamples' code): distances ``p - j > mem_len`` are masked, so a
      query sees ``mem_len + 1`` keys.
    """
    if same_length_mask == "authors":
        window = mem_len
    elif same_length_mask == "nvidia":
        window = mem_len + 1
    else:
        raise ValueError("same_length_mask must be 'authors' or 'nvidia'")
    p = torch.arange(mlen, mlen + qlen, device=device).unsqueeze(1)
    j = torch.arange(mlen + qlen, device=device).unsqueeze(0)
    mask = j > p
    if same_length:
        mask = mask | (p - j >= window)
    return mask


def position_index(qlen: int, mlen: int, positions: int, mask: Optional[Tensor],
                   device: Optional[torch.device] = None) -> Tensor:
    """Where :func:`indexed_relative_attention` reads each (query, key) pair's position score.

    ``positions``: the rows of :func:`position_encodings` after its zero row (``P``; they stand for
    distances ``P-1, ..., 0``, the first clamped). Returns int64 ``[qlen, mlen + qlen]``: for query
    ``i`` and key ``j`` at distance ``d = mlen + i - j``, column ``P - min(d, P - 1)`` of the
    position scores ``[..., P + 1]``; column 0 (the zero row's, which that function overwrites with
    the mask value) where ``mask`` hides the key.
    """
    i = torch.arange(qlen, device=device).unsqueeze(1)
    j = torch.arange(mlen + qlen, device=device).unsqueeze(0)
    index = positions - (mlen + i - j).clamp(0, positions - 1)
    if mask is not None:
        index = index.masked_fill(mask, 0)
    return index


def rel_shift(x_padded: Tensor) -> Tensor:
    """Realign position scores from (query, encoding row) to (query, key) by pad-and-reshape.

    ``x_padded``: ``[H, B, T, K + 1]``, contiguous, whose column 0 is zero (the pad) and whose column
    ``c + 1`` holds the score of query ``i`` against encoding row ``c`` (distance ``K - 1 - c``).
    Returns a view ``[H, B, T, K]`` with ``out[..., i, j] = x[..., i, T - 1 + j - i]``: the score for
    distance ``M + i - j`` (``M = K - T``) wherever ``j <= M + i``. Entries above that causal diagonal
    are other rows' values and must be masked by the caller.

    Reading the padded ``[T, K + 1]`` block flat, skipping its first ``T`` entries and reading the rest
    as ``[T, K]`` shifts row ``i`` left by ``T - 1 - i`` places: no copy, no loop.
    """
    heads, bsz, qlen, klen_plus_1 = x_padded.shape
    flat = x_padded.reshape(heads, bsz, qlen * klen_plus_1)
    return flat[:, :, qlen:].view(heads, bsz, qlen, klen_plus_1 - 1)


def relative_attention(q: Tensor, k: Tensor, v: Tensor, position_keys: Tensor, r_w_bias: Tensor,
                       r_r_bias: Tensor, mask: Optional[Tensor], dropatt: float = 0.0,
                       training: bool = False) -> Tensor:
    """Attention of ``T`` queries over ``K`` keys with Transformer-XL's relative positions.

    q ``[B, T, H, Dh]``; k, v ``[B, K, H, Dh]`` (memory first, then the segment); position_keys
    ``[K + 1, H, Dh]`` or, for distinct clamped distances, fewer rows (``r_net`` of
    :func:`position_encodings`); r_w_bias, r_r_bias ``[H, Dh]``;
    mask bool ``[T, K]`` or None. Returns ``[B, T, H * Dh]``. Scores are masked and normalised in
    fp32 whatever the input dtype.
    """
    bsz, qlen, n_head, d_head = q.shape
    klen = k.size(1)
    scale = 1.0 / math.sqrt(d_head)
    # Content term (q + u).k: [B, H, T, K]. The scale is folded into the (small) queries.
    q_content = ((q + r_w_bias) * scale).transpose(1, 2)
    score = torch.matmul(q_content, k.permute(0, 2, 3, 1))
    # Position term (q + v).R for every (query, encoding row), one GEMM per head over all
    # B*T queries: [H, B*T, Dh] @ [H, Dh, K+1] -> [H, B, T, K+1], column 0 = 0 (zero row).
    q_position = ((q + r_r_bias) * scale).permute(2, 0, 1, 3).reshape(n_head, bsz * qlen, d_head)
    position = torch.bmm(q_position, position_keys.permute(1, 2, 0))
    position = expand_clamped_positions(position.view(n_head, bsz, qlen, -1), klen)
    # In place: neither matmul's nor masked_fill's backward needs these values.
    score.add_(rel_shift(position).transpose(0, 1))
    if score.dtype == torch.float16 or score.dtype == torch.bfloat16:
        score = score.float()  # mask and normalise in fp32, never in half precision
    if mask is not None:
        score.masked_fill_(mask, -1e30)  # MASK_VALUE (a literal: TorchScript reads no globals)
    prob = torch.softmax(score, dim=-1).to(v.dtype)
    if dropatt > 0.0 and training:
        prob = F.dropout(prob, p=dropatt)
    attn = torch.matmul(prob, v.transpose(1, 2))  # [B, H, T, Dh]
    return attn.transpose(1, 2).reshape(bsz, qlen, n_head * d_head)


def masked_position_scores(q: Tensor, position_keys: Tensor, r_r_bias: Tensor, scale: float) -> Tensor:
    """The position term ``(q + v).R`` of the indexed kernels, ``[B, H, T, P + 1]`` (a transposed
    view): q ``[B, T, H, Dh]`` against position_keys ``[P + 1, H, Dh]``, one GEMM per head over all
    ``B * T`` queries, with column 0 (the zero row's) set to ``-1e30``: what masked pairs read."""
    bsz, qlen, n_head, d_head = q.shape
    q_position = ((q + r_r_bias) * scale).permute(2, 0, 1, 3).reshape(n_head, bsz * qlen, d_head)
    position = torch.bmm(q_position, position_keys.permute(1, 2, 0))  # [H, B*T, P+1]
    position.select(2, 0).fill_(-1e30)  # MASK_VALUE (a literal, no scalar tensor made)
    return position.view(n_head, bsz, qlen, -1).transpose(0, 1)


def indexed_relative_attention(q: Tensor, k: Tensor, v: Tensor, position_keys: Tensor,
                               r_w_bias: Tensor, r_r_bias: Tensor, index: Tensor) -> Tensor:
    """:func:`relative_attention` without dropout, for inference passes in fp32 (or fp64), in fewer
    passes over the ``[B, H, T, K]`` scores.

    The position scores against the (distinct) encodings are realigned to (query, key) pairs by one
    gather with ``index`` (:func:`position_index`, made once per shape by the inference cache),
    which also writes the mask: masked pairs read column 0, set to ``-1e30`` here (its true score,
    against the zero row, is never read). The content term is then added by the matrix product
    itself (``baddbmm_``), so the scores are written once and read once more, by the softmax,
    where the reference writes them with the content GEMM and then adds the expanded, shifted
    position term and the mask in further passes. Masked scores end as ``-1e30 + (q+u).k``, which is
    ``-1e30`` in fp32 (the product is far below its rounding step), and the softmax gives them 0
    as in the reference. Not for half precision, whose scores the reference normalises in fp32.
    Same arguments as :func:`relative_attention`, with ``index`` ``[T, K]`` in place of the mask.
    """
    bsz, qlen, n_head, d_head = q.shape
    klen = k.size(1)
    scale = 1.0 / math.sqrt(d_head)
    position = masked_position_scores(q, position_keys, r_r_bias, scale)
    score = position.gather(3, index.expand(bsz, n_head, qlen, klen))  # [B, H, T, K], contiguous
    q_content = ((q + r_w_bias) * scale).transpose(1, 2).reshape(bsz * n_head, qlen, d_head)
    keys = k.permute(0, 2, 3, 1).reshape(bsz * n_head, d_head, klen)
    score.view(bsz * n_head, qlen, klen).baddbmm_(q_content, keys)
    prob = torch.softmax(score, dim=-1)
    attn = torch.matmul(prob, v.transpose(1, 2))  # [B, H, T, Dh]
    return attn.transpose(1, 2).reshape(bsz, qlen, n_head * d_head)


def indexed_window_attention(q: Tensor, keys: Tensor, values: Tensor, position_keys: Tensor,
                             r_w_bias: Tensor, r_r_bias: Tensor, index: Tensor, qlen: int,
                             key_start: int) -> Tensor:
    """:func:`indexed_relative_attention` of consecutive segments of ``qlen`` queries, each over its
    own window of one sequence of keys (:mod:`truncated_bptt.segment_block`).

    q ``[B, n * qlen, H, Dh]``: the segments' queries; keys ``[B * H, Dh, L]`` and values
    ``[B * H, L, Dh]``: head-major, of the whole ``[memory; block]``; segment ``j`` attends over
    positions ``key_start + j * qlen`` onward, as many as ``index`` ``[qlen, window]`` has columns
    (the index of its shape); position_keys ``[P + 1, H, Dh]``. Returns ``[B, n * qlen, H * Dh]``.

    The position and query projections run once for all segments; the scores are made one segment
    at a time, so each segment's ``[B, H, qlen, window]`` stays in the CPU's caches through its
    gather, matrix product and softmax (all segments' scores at once are several times larger).
    """
    bsz, rows, n_head, d_head = q.shape
    window = index.size(1)
    scale = 1.0 / math.sqrt(d_head)
    position = masked_position_scores(q, position_keys, r_r_bias, scale)  # [B, H, rows, P+1]
    q_content = ((q + r_w_bias) * scale).transpose(1, 2).reshape(bsz * n_head, rows, d_head)
    out = q.new_empty(bsz, rows, n_head, d_head)
    for first in range(0, rows, qlen):
        keys_from = key_start + first
        score = position[:, :, first:first + qlen].gather(3, index.expand(bsz, n_head, qlen, window))
        score.view(bsz * n_head, qlen, window).baddbmm_(
            q_content[:, first:first + qlen], keys[:, :, keys_from:keys_from + window])
        prob = torch.softmax(score, dim=-1).view(bsz * n_head, qlen, window)
        attn = torch.bmm(prob, values[:, keys_from:keys_from + window])  # [B*H, qlen, Dh]
        out[:, first:first + qlen] = attn.view(bsz, n_head, qlen, d_head).transpose(1, 2)
    return out.view(bsz, rows, n_head * d_head)


def fused_relative_attention(q: Tensor, k: Tensor, v: Tensor, position_keys: Tensor,
                             r_w_bias: Tensor, r_r_bias: Tensor, mask: Optional[Tensor],
                             dropatt: float = 0.0, training: bool = False) -> Tensor:
    """:func:`relative_attention` through torch's fused ``scaled_dot_product_attention``.

    The position term (after the relative shift, masked with ``-inf``) is the kernel's additive
    attention bias; the kernel computes the content term, the softmax and the weighted sum without
    keeping the probabilities (on CUDA the memory-efficient kernel, which supports a bias and its
    gradient). Same arguments and result as :func:`relative_attention`; no row is ever fully masked
    (a query always sees itself), so ``-inf`` gives no NaN.
    """
    bsz, qlen, n_head, d_head = q.shape
    klen = k.size(1)
    scale = 1.0 / math.sqrt(d_head)
    q_position = ((q + r_r_bias) * scale).permute(2, 0, 1, 3).reshape(n_head, bsz * qlen, d_head)
    position = torch.bmm(q_position, position_keys.permute(1, 2, 0))
    position = expand_clamped_positions(position.view(n_head, bsz, qlen, -1), klen)
    bias = rel_shift(position).transpose(0, 1)
    if mask is not None:
        bias = bias.masked_fill(mask, float("-inf"))
    out = F.scaled_dot_product_attention(
        (q + r_w_bias).transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=bias.contiguous(), dropout_p=dropatt if training else 0.0, scale=scale,
    )
    return out.transpose(1, 2).reshape(bsz, qlen, n_head * d_head)


class RelativeMultiHeadAttention(nn.Module):
    """Relative multi-head attention sublayer with residual connection and LayerNorm.

    Parameters follow the original ``RelPartialLearnableMultiHeadAttn``: ``qkv_net`` (fused q/k/v,
    no bias), ``r_net`` (positional keys, no bias), ``o_net`` (no bias), ``layer_norm``. The biases
    ``u``/``v`` are passed in, so they can be shared across layers or owned per layer.
    """

    def __init__(self, n_head: int, d_model: int, d_head: int, dropout: float, dropatt: float,
                 pre_lnorm: bool = False, implementation: str = "auto"):
        super().__init__()
        self.n_head, self.d_model, self.d_head = n_head, d_model, d_head
        self.pre_lnorm = pre_lnorm
        # "reference" (relative_attention), "sdpa" (fused_relative_attention), or "auto": sdpa on
        # CUDA, reference elsewhere (docs/model.md: what was measured on CPU)
        self.implementation = implementation
        self.dropout, self.dropatt = dropout, dropatt
        self.qkv_net = nn.Linear(d_model, 3 * n_head * d_head, bias=False)
        self.r_net = nn.Linear(d_model, n_head * d_head, bias=False)
        self.o_net = nn.Linear(n_head * d_head, d_model, bias=False)
        self.layer_norm = nn.LayerNorm(d_model)

    def memory_keys_values(self, memory: Tensor) -> Tensor:
        """Keys and values ``[B, M, 2, n_head, d_head]`` of a (detached) memory ``[B, M, d_model]``,
        from the k/v rows of ``qkv_net``: autograd never forms a gradient for the memory."""
        x = self.layer_norm(memory) if self.pre_lnorm else memory
        kv_weight = self.qkv_net.weight[self.n_head * self.d_head:]
        return F.linear(x, kv_weight).view(memory.size(0), memory.size(1), 2, self.n_head, self.d_head)

    def forward(self, h: Tensor, encodings: Tensor, mask: Optional[Tensor], r_w_bias: Tensor,
                r_r_bias: Tensor, memory: Optional[Tensor] = None,
                keys_values: Optional[Tensor] = None, position_keys: Optional[Tensor] = None,
                position_index: Optional[Tensor] = None) -> Tensor:
        """h ``[B, T, d_model]`` -> ``[B, T, d_model]``, attending over ``[memory; h]``.

        The memory's keys/values come from one of:
        - ``memory`` ``[B, M, d_model]`` (or None: no memory), projected here;
        - ``keys_values`` ``[B, M + T, 2, n_head, d_head]`` whose first ``M`` positions already hold
          them (an inference pass keeps them, :mod:`truncated_bptt.inference_cache`): the segment's
          keys/values are written into the last ``T`` positions and ``memory`` is not read.
        position_keys: ``r_net(encodings)`` ``[K + 1, n_head * d_head]`` if already computed.
        position_index: an inference pass's (:class:`AttentionContext`); ``auto`` off CUDA then
        attends by :func:`indexed_relative_attention` (the mask is in the index), in fp32/fp64.
        """
        qlen = h.size(1)
        q, kv = self.queries_keys_values(h)
        if keys_values is not None:
            keys_values[:, keys_values.size(1) - qlen:].copy_(kv)
            kv = keys_values
        elif memory is not None and memory.size(1) > 0:
            kv = torch.cat([self.memory_keys_values(memory).to(kv.dtype), kv], dim=1)
        if position_keys is None:
            position_keys = F.linear(encodings, self.r_net.weight)
        k, v = kv.unbind(2)
        attn = self.attend(q, k, v, position_keys, r_w_bias, r_r_bias, mask, position_index)
        return self.output(h, attn)

    def queries_keys_values(self, h: Tensor) -> Tuple[Tensor, Tensor]:
        """h ``[B, T, d_model]`` -> queries ``[B, T, n_head, d_head]``, keys/values
        ``[B, T, 2, n_head, d_head]`` (views of one projection)."""
        bsz, qlen, _ = h.shape
        x = self.layer_norm(h) if self.pre_lnorm else h
        qkv = F.linear(x, self.qkv_net.weight).view(bsz, qlen, 3, self.n_head, self.d_head)
        # split/unbind rather than indexing: their backward writes each gradient once (cat/stack),
        # where an index's backward zero-fills a tensor of the whole qkv (or kv) and adds it up
        q, kv = qkv.split([1, 2], dim=2)
        return q.squeeze(2), kv

    def attend(self, q: Tensor, k: Tensor, v: Tensor, position_keys: Tensor, r_w_bias: Tensor,
               r_r_bias: Tensor, mask: Optional[Tensor], position_index: Optional[Tensor]) -> Tensor:
        """The attention kernel this module is set to (see :meth:`forward`): ``[B, T, H * Dh]``."""
        position_keys = position_keys.view(-1, self.n_head, self.d_head)
        if self.fused(q):
            return fused_relative_attention(q, k, v, position_keys, r_w_bias, r_r_bias, mask,
                                            self.dropatt, self.training)
        if position_index is not None and self.indexed(q):
            return indexed_relative_attention(q, k, v, position_keys, r_w_bias, r_r_bias,
                                              position_index)
        return relative_attention(q, k, v, position_keys, r_w_bias, r_r_bias, mask,
                                  self.dropatt, self.training)

    def fused(self, q: Tensor) -> bool:
        """Whether :meth:`attend` runs :func:`fused_relative_attention`: sdpa, or auto on CUDA."""
        return self.implementation == "sdpa" or (self.implementation == "auto" and q.is_cuda)

    def indexed(self, q: Tensor) -> bool:
        """Whether :meth:`attend`, given an inference pass's position index, runs
        :func:`indexed_relative_attention`: auto off CUDA, in eval mode, outside half precision."""
        return self.implementation == "auto" and not q.is_cuda and not self.training \
            and not (q.dtype == torch.float16 or q.dtype == torch.bfloat16)

    def output(self, h: Tensor, attn: Tensor) -> Tensor:
        """The output projection of ``attn`` ``[B, T, H * Dh]``, then residual and LayerNorm."""
        out = self.o_net(attn)
        if self.dropout > 0.0 and self.training:
            out = F.dropout(out, p=self.dropout)
        if self.pre_lnorm:
            return h + out
        return self.layer_norm(h + out)
