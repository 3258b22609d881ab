"""Weights prepacked for oneDNN's fp32 matrix products, for inference passes on CPU.

Scoring multiplies the same softmax weights by a few rows per segment: the head by the segment's
``B * T`` hidden states, each tail cluster by the few whose targets fall in it (often under ten rows
against ``[23280, d]`` at WikiText's vocabulary). For that skinny shape MKL's ``sgemm`` on the plain
row-major weight runs far below the machine's matmul peak; oneDNN's inner-product kernel on a
weight reordered once into its blocked layout runs the large clusters' products up to about twice
as fast, in fp32 (``benchmarks/softmax_layout.py`` times the layouts with cold caches). The
reordered copy costs the memory of the softmax weights once more while a pass runs: 34 MB for the
benchmark's WikiText-2 model, about 440 MB for ``wt103_base`` (267,735 x 410 fp32).

The layers' linear maps (``qkv_net``, ``o_net``, ``fc1`` with its ReLU fused, ``fc2``) are packed
too: a scoring segment multiplies them by only ``B * T`` rows (64 at batch 1), where oneDNN's
kernel on the packed weight is 1.1-1.5x faster than ``F.linear`` (``benchmarks/softmax_layout.py``
times them too). That copy is small: the layers' weights once more (12.6 MB for the benchmark
model, about 150 MB for ``wt103_base``).

Lifetime: the decoder keeps one :class:`PackedWeights` per *cache epoch* (the epoch of
:mod:`truncated_bptt.inference_cache`), so the copy is dropped, never reused, as soon as the weights
may change: ``model.train()``, every update, loading a state dict, moving or casting the model.
Gradients never flow through it: only passes without autograd use it.
"""
import functools
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


@functools.lru_cache(maxsize=None)
def packing_available() -> bool:
    """Whether this torch has oneDNN (mkldnn) on CPU with the reorder and inner-product ops
    (fixed for the process: asked once, not at every scoring call)."""
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise"))


def can_pack(weight: Tensor) -> bool:
    """fp32 CPU weights (what oneDNN's fp32 kernels take) on a torch with oneDNN."""
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and packing_available()


def pack(weight: Tensor) -> Tensor:
    """``weight`` ``[out, in]`` -> a oneDNN tensor of the same values in oneDNN's blocked layout."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous())


def packed_linear(x: Tensor, packed: Tensor, bias: Optional[Tensor], activation: str = "none") -> Tensor:
    """``F.linear(x, weight, bias)`` with the weight from :func:`pack`, then ``activation``
    ("none" or "relu", fused into the kernel): x ``[..., in]`` -> ``[..., out]``."""
    flat = x.reshape(-1, x.size(-1)).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(flat, packed, bias, activation, [], "")
    return out.view(*x.shape[:-1], out.size(-1))


@torch.jit.unused
def _onednn_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool) -> Tensor:
    # (eager only: TorchScript and compiled graphs never hold packed weights)
    return packed_linear(x, weight, bias, "relu" if relu else "none")


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, relu: bool = False) -> Tensor:
    """``F.linear(x, weight, bias)``, then ReLU if ``relu``; through oneDNN if ``weight`` is packed
    (:func:`pack`). Scriptable: the layers run it in TorchScript too, with plain weights."""
    if weight.is_mkldnn:
        return _onednn_linear(x, weight, bias, relu)
    out = F.linear(x, weight, bias)
    return F.relu(out) if relu else out


class PackedWeights:
    """One cache epoch's packed copies of a decoder's weights.

    clusters: the clusters of its
        :class:`~truncated_bptt.projected_adaptive_softmax.ProjectedAdaptiveSoftmax` as its
        functions take them: ``clusters[i]`` is (packed weight, bias, projection or None). The
        head's packed weight already holds the rows standing for the tail clusters, after its own
        (so no tail weight is passed separately).
    layers: every layer's :class:`~truncated_bptt.transformer_xl_layer.LayerWeights`, packed, or
        None where the layers must keep their own weights (``--compile``).
    """

    def __init__(self, epoch: int, clusters: List[Tuple[Tensor, Tensor, Optional[Tensor]]],
                 layers: Optional[list] = None):
        self.epoch = epoch
        self.clusters = clusters
        self.layers = layers
