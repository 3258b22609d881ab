"""One Transformer-XL decoder layer: relative attention sublayer, then position-wise feed-forward."""
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from truncated_bptt.packed_weights import linear, pack
from truncated_bptt.relative_attention import AttentionContext, RelativeMultiHeadAttention


class LayerWeights(NamedTuple):
    """The weight matrices a layer multiplies by, when given from outside its modules: copies
    packed for oneDNN in inference passes on CPU (:mod:`truncated_bptt.packed_weights`).

    qkv ``[3 * n_head * d_head, d_model]``, o ``[d_model, n_head * d_head]``, fc1
    ``[d_inner, d_model]``, fc2 ``[d_model, d_inner]`` (the biases stay the modules').
    """
    qkv: Tensor
    o: Tensor
    fc1: Tensor
    fc2: Tensor


class PositionwiseFeedForward(nn.Module):
    """``LayerNorm(x + Dropout(W2 Dropout(ReLU(W1 x))))`` (post-norm) or its pre-norm form."""

    def __init__(self, d_model: int, d_inner: int, dropout: float, pre_lnorm: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_inner)
        self.fc2 = nn.Linear(d_inner, d_model)
        self.layer_norm = nn.LayerNorm(d_model)
        self.dropout = dropout
        self.pre_lnorm = pre_lnorm

    def forward(self, h: Tensor, fc1_weight: Optional[Tensor] = None,
                fc2_weight: Optional[Tensor] = None) -> Tensor:
        """h: ``[..., d_model]`` -> ``[..., d_model]``; ``fc1_weight``/``fc2_weight``: packed copies
        of the weights to use instead (:class:`LayerWeights`)."""
        x = self.layer_norm(h) if self.pre_lnorm else h
        drop = self.dropout > 0.0 and self.training  # F.dropout(p=0) would still copy
        x = linear(x, self.fc1.weight if fc1_weight is None else fc1_weight, self.fc1.bias, relu=True)
        if drop:
            x = F.dropout(x, p=self.dropout)
        x = linear(x, self.fc2.weight if fc2_weight is None else fc2_weight, self.fc2.bias)
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

    def packed_weights(self) -> LayerWeights:
        """This layer's weight matrices packed for oneDNN (fp32 CPU inference only)."""
        return LayerWeights(pack(self.attn.qkv_net.weight), pack(self.attn.o_net.weight),
                            pack(self.ff.fc1.weight), pack(self.ff.fc2.weight))

    def forward(self, h: Tensor, context: AttentionContext, memory: Optional[Tensor] = None,
                keys_values: Optional[Tensor] = None, position_keys: Optional[Tensor] = None,
                weights: Optional[LayerWeights] = None) -> Tensor:
        """h ``[B, T, d]`` -> ``[B, T, d]``. memory ``[B, M, d]`` (this layer's input at the memory
        positions) or None; keys_values / position_keys: what an inference pass already computed
        (see :meth:`RelativeMultiHeadAttention.forward`); weights: packed copies of the weight
        matrices to multiply by instead of the modules' (:meth:`packed_weights`)."""
        r_w_bias, r_r_bias = self.r_w_bias, self.r_r_bias
        if r_w_bias is None or r_r_bias is None:
            r_w_bias, r_r_bias = context.r_w_bias, context.r_r_bias
        assert r_w_bias is not None and r_r_bias is not None, "shared u/v missing from the context"
        qkv_weight: Optional[Tensor] = None  # (annotated one by one for TorchScript)
        o_weight: Optional[Tensor] = None
        fc1_weight: Optional[Tensor] = None
        fc2_weight: Optional[Tensor] = None
        if weights is not None:
            qkv_weight, o_weight, fc1_weight, fc2_weight = weights.qkv, weights.o, weights.fc1, weights.fc2
        out = self.attn(h, context.encodings, context.mask, r_w_bias, r_r_bias, memory=memory,
                        keys_values=keys_values, position_keys=position_keys,
                        position_mask=context.position_mask, qkv_weight=qkv_weight,
                        o_weight=o_weight)
        return self.ff(out, fc1_weight, fc2_weight)
