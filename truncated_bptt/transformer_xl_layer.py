"""One Transformer-XL decoder layer: relative attention sublayer, then position-wise feed-forward."""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from truncated_bptt.relative_attention import AttentionContext, RelativeMultiHeadAttention
from truncated_bptt.segment_block import SegmentAttention, block_attention


class PositionwiseFeedForward(nn.Module):
    """``LayerNorm(x + Dropout(W2 Dropout(ReLU(W1 x))))`` (post-norm) or its pre-norm form."""

    def __init__(self, d_model: int, d_inner: int, dropout: float, pre_lnorm: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_inner)
        self.fc2 = nn.Linear(d_inner, d_model)
        self.layer_norm = nn.LayerNorm(d_model)
        self.dropout = dropout
        self.pre_lnorm = pre_lnorm

    def forward(self, h: Tensor) -> Tensor:
        """h: ``[..., d_model]`` -> ``[..., d_model]``."""
        x = self.layer_norm(h) if self.pre_lnorm else h
        drop = self.dropout > 0.0 and self.training  # F.dropout(p=0) would still copy
        x = F.relu(self.fc1(x))
        if drop:
            x = F.dropout(x, p=self.dropout)
        x = self.fc2(x)
        if drop:
            x = F.dropout(x, p=self.dropout)
        if self.pre_lnorm:
            return h + x
        return self.layer_norm(h + x)


class TransformerXLLayer(nn.Module):
    """Attention over ``[memory; segment]`` followed by the feed-forward block.

    With ``untie_r`` the layer owns its ``r_w_bias``/``r_r_bias`` (``u``/``v``); otherwise it uses
    the shared ones of the :class:`AttentionContext`.
    """

    def __init__(self, n_head, d_model, d_head, d_inner, dropout, dropatt, pre_lnorm=False,
                 untie_r=False, attention="auto"):
        super().__init__()
        self.attn = RelativeMultiHeadAttention(n_head, d_model, d_head, dropout, dropatt, pre_lnorm,
                                               attention)
        self.ff = PositionwiseFeedForward(d_model, d_inner, dropout, pre_lnorm)
        if untie_r:
            self.r_w_bias = nn.Parameter(torch.empty(n_head, d_head))
            self.r_r_bias = nn.Parameter(torch.empty(n_head, d_head))
        else:
            self.r_w_bias = self.r_r_bias = None

    def forward(self, h: Tensor, context: AttentionContext, memory: Optional[Tensor] = None,
                keys_values: Optional[Tensor] = None,
                position_keys: Optional[Tensor] = None) -> Tensor:
        """h ``[B, T, d]`` -> ``[B, T, d]``. memory ``[B, M, d]`` (this layer's input at the memory
        positions) or None; keys_values / position_keys: what an inference pass already computed
        (see :meth:`RelativeMultiHeadAttention.forward`)."""
        r_w_bias, r_r_bias = self._biases(context)
        out = self.attn(h, context.encodings, context.mask, r_w_bias, r_r_bias, memory=memory,
                        keys_values=keys_values, position_keys=position_keys,
                        position_index=context.position_index)
        return self.ff(out)

    def forward_block(self, h: Tensor, keys_values: Tensor, segments: List[SegmentAttention]) -> Tensor:
        """Consecutive segments at once in an inference pass (:mod:`truncated_bptt.segment_block`):
        h ``[B, N, d]`` -> ``[B, N, d]``; see :func:`~truncated_bptt.segment_block.block_attention`."""
        r_w_bias, r_r_bias = self._biases(segments[0].context)
        return self.ff(block_attention(self.attn, h, keys_values, segments, r_w_bias, r_r_bias))

    def _biases(self, context: AttentionContext) -> Tuple[Tensor, Tensor]:
        """u/v: the layer's own, or the shared ones the context carries."""
        r_w_bias, r_r_bias = self.r_w_bias, self.r_r_bias
        if r_w_bias is None or r_r_bias is None:
            r_w_bias, r_r_bias = context.r_w_bias, context.r_r_bias
        assert r_w_bias is not None and r_r_bias is not None, "shared u/v missing from the context"
        return r_w_bias, r_r_bias
