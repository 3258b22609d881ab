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
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Masked scores are filled with this finite value (softmax runs in fp32, where exp() of it is 0).
# Finite on purpose: a fully masked row then gives a uniform distribution instead of NaNs, and no
# -inf ever meets half-precision arithmetic.
MASK_VALUE = -1e30


def relative_positions(klen: int, clamp_len: int, device=None) -> Tensor:
    """Relative distances ``[klen]`` in descending order ``klen-1, ..., 0``, clipped at ``clamp_len``.

    Entry ``c`` is the distance that encoding row ``c`` stands for; ``clamp_len <= 0`` means no clamp.
    """
    pos = torch.arange(klen - 1, -1, -1, device=device, dtype=torch.float32)
    if clamp_len > 0:
        pos = pos.clamp_(max=clamp_len)
    return pos


def sinusoidal_encoding(positions: Tensor, d_model: int) -> Tensor:
    """Transformer sinusoids ``[len(positions), d_model]`` = ``[sin(pos * f), cos(pos * f)]`` (fp32)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0.0, d_model, 2.0, device=positions.device) / d_model))
    angles = torch.outer(positions.float(), inv_freq)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def position_encodings(klen: int, d_model: int, clamp_len: int, device=None, dtype=None) -> Tensor:
    """``[klen + 1, d_model]``: a zero row (the pad :func:`rel_shift` relies on), then the encodings
    of distances ``klen-1, ..., 0`` (clamped)."""
    enc = sinusoidal_encoding(relative_positions(klen, clamp_len, device), d_model)
    return F.pad(enc, (0, 0, 1, 0)).to(dtype or enc.dtype)


def rel_shift(x_padded: Tensor) -> Tensor:
    """Realign position scores from (query, encoding row) to (query, key) by pad-and-reshape.

    ``x_padded``: ``[..., T, K + 1]``, contiguous, whose column 0 is zero (the pad) and whose column
    ``c + 1`` holds the score of query ``i`` against encoding row ``c`` (distance ``K - 1 - c``).
    Returns a view ``[..., T, K]`` with ``out[..., i, j] = x[..., i, T - 1 + j - i]``: the score for
    distance ``M + i - j`` (``M = K - T``) wherever ``j <= M + i``. Entries above that causal diagonal
    are other rows' values and must be masked by the caller.

    Reading the padded ``[T, K + 1]`` block flat, skipping its first ``T`` entries and reading the rest
    as ``[T, K]`` shifts row ``i`` left by ``T - 1 - i`` places: no copy, no loop.
    """
    *batch, qlen, klen_plus_1 = x_padded.shape
    klen = klen_plus_1 - 1
    flat = x_padded.reshape(*batch, qlen * klen_plus_1)
    return flat[..., qlen:].view(*batch, qlen, klen)


def attention_mask(qlen: int, mlen: int, same_length: bool, mem_len: int, device=None) -> Tensor:
    """Boolean mask ``[qlen, mlen + qlen]``, True where query ``i`` must NOT see key ``j``.

    Query ``i`` sits at key position ``p = mlen + i``. Causal: keys ``j > p`` are masked.
    ``same_length`` (the authors' / NVIDIA's / HuggingFace's variant): additionally keys at distance
    ``p - j >= mem_len`` are masked, so every query sees exactly the ``mem_len`` most recent keys
    including itself (fewer only where fewer exist). With a full memory (``mlen == mem_len``) the
    oldest memory key is therefore never seen, exactly as in the original code.
    """
    p = torch.arange(mlen, mlen + qlen, device=device).unsqueeze(1)
    j = torch.arange(mlen + qlen, device=device).unsqueeze(0)
    mask = j > p
    if same_length:
        mask = mask | (p - j >= mem_len)
    return mask


class RelativeMultiHeadAttention(nn.Module):
    """Relative multi-head attention sublayer with residual connection and LayerNorm.

    Parameters follow the original ``RelPartialLearnableMultiHeadAttn``: ``qkv_net`` (fused q/k/v,
    no bias), ``r_net`` (positional keys, no bias), ``o_net`` (no bias), ``layer_norm``. The biases
    ``u``/``v`` are passed in, so they can be shared across layers or owned per layer.
    """

    def __init__(self, n_head: int, d_model: int, d_head: int, dropout: float, dropatt: float,
                 pre_lnorm: bool = False):
        super().__init__()
        self.n_head, self.d_model, self.d_head = n_head, d_model, d_head
        self.scale = 1.0 / math.sqrt(d_head)
        self.pre_lnorm = pre_lnorm
        self.dropout, self.dropatt = dropout, dropatt
        self.qkv_net = nn.Linear(d_model, 3 * n_head * d_head, bias=False)
        self.r_net = nn.Linear(d_model, n_head * d_head, bias=False)
        self.o_net = nn.Linear(n_head * d_head, d_model, bias=False)
        self.layer_norm = nn.LayerNorm(d_model)

    def forward(self, h: Tensor, pos_emb: Tensor, r_w_bias: Tensor, r_r_bias: Tensor,
                mask: Optional[Tensor], mem: Optional[Tensor] = None,
                mem_kv: Optional[Tensor] = None, pos_key: Optional[Tensor] = None,
                kv_out: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """
        h: ``[B, T, d_model]`` current segment; mem: ``[B, M, d_model]`` or None (detached).
        mem_kv: optional ``[B, M, 2, n_head, d_head]`` keys/values of ``mem`` computed earlier with
        the same weights (generation and evaluation reuse them instead of recomputing).
        pos_emb: ``[K + 1, d_model]`` encodings whose row 0 is zero and rows ``1..K`` stand for
        distances ``K-1, ..., 0`` (see :func:`rel_shift`); r_w_bias/r_r_bias: ``[n_head, d_head]``.
        mask: bool ``[T, K]`` (True = hidden) or None. pos_key: optional ``r_net(pos_emb)``
        ``[K + 1, n_head * d_head]`` computed earlier with the same weights. kv_out: optional
        ``[B, K, 2, n_head, d_head]`` whose first ``M`` positions already hold the memory's keys/values
        (see :mod:`truncated_bptt.memory_buffers`): the segment's are written after them, and
        ``mem``/``mem_kv`` are not used.
        Returns the output ``[B, T, d_model]`` and the keys/values ``[B, K, 2, n_head, d_head]``.
        """
        bsz, qlen, _ = h.shape
        n_head, d_head, hd = self.n_head, self.d_head, self.n_head * self.d_head
        x = self.layer_norm(h) if self.pre_lnorm else h
        # Fused q/k/v for the current segment; keys/values of the (detached) memory come from the
        # k/v rows of the same weight, so autograd never forms a gradient for the memory inputs.
        qkv = F.linear(x, self.qkv_net.weight).view(bsz, qlen, 3, n_head, d_head)
        q, kv = qkv[:, :, 0], qkv[:, :, 1:]
        if kv_out is not None:  # the memory's keys/values are already in place: no copy of them
            kv_out[:, kv_out.size(1) - qlen:].copy_(kv)
            kv, mem, mem_kv = kv_out, None, None
        if mem_kv is None and mem is not None and mem.size(1) > 0:
            m = self.layer_norm(mem) if self.pre_lnorm else mem
            mem_kv = F.linear(m, self.qkv_net.weight[hd:]).view(bsz, -1, 2, n_head, d_head)
        if mem_kv is not None and mem_kv.size(1) > 0:
            kv = torch.cat([mem_kv.to(kv.dtype), kv], dim=1)
        k, v = kv.unbind(2)
        klen = k.size(1)
        if pos_key is None:
            pos_key = F.linear(pos_emb, self.r_net.weight)
        r = pos_key.view(klen + 1, n_head, d_head)

        # Content term (q + u).k: [B, H, T, K]. The scale is folded into the (small) queries.
        q_content = ((q + r_w_bias) * self.scale).transpose(1, 2)
        score = torch.matmul(q_content, k.permute(0, 2, 3, 1))
        # Position term (q + v).R for every (query, encoding row), one GEMM per head over all
        # B*T queries: [H, B*T, Dh] @ [H, Dh, K+1] -> [H, B, T, K+1], column 0 = 0 (zero row).
        q_position = ((q + r_r_bias) * self.scale).permute(2, 0, 1, 3).reshape(n_head, bsz * qlen, d_head)
        position = torch.bmm(q_position, r.permute(1, 2, 0)).view(n_head, bsz, qlen, klen + 1)
        # In place: neither matmul's nor masked_fill's backward needs these values.
        score.add_(rel_shift(position).transpose(0, 1))
        if score.dtype in (torch.float16, torch.bfloat16):  # mask/normalise in fp32, never in half
            score = score.float()
        if mask is not None:
            score.masked_fill_(mask, MASK_VALUE)
        prob = torch.softmax(score, dim=-1).to(v.dtype)
        if self.dropatt > 0.0 and self.training:
            prob = F.dropout(prob, p=self.dropatt)
        attn = torch.matmul(prob, v.transpose(1, 2))  # [B, H, T, Dh]
        attn = attn.transpose(1, 2).reshape(bsz, qlen, hd)
        out = self.o_net(attn)
        if self.dropout > 0.0 and self.training:
            out = F.dropout(out, p=self.dropout)
        if self.pre_lnorm:
            return h + out, kv
        return self.layer_norm(h + out), kv
