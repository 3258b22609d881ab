"""Output-layer weights prepacked for oneDNN's fp32 matrix products, for inference passes on CPU.

Scoring multiplies the same softmax weights by a few rows per segment: the head by the segment's
``B * T`` hidden states, each tail cluster by the few whose targets fall in it (often under ten rows
against ``[23280, d]`` at WikiText's vocabulary). For that skinny shape MKL's ``sgemm`` on the plain
row-major weight runs far below the machine's matmul peak; oneDNN's inner-product kernel on a
weight reordered once into its blocked layout runs the large clusters' products up to about twice
as fast, in fp32 (``benchmarks/softmax_layout.py`` times the layouts with cold caches). The
reordered copy costs the memory of the softmax weights once more while a pass runs: 34 MB for the
benchmark's WikiText-2 model, about 440 MB for ``wt103_base`` (267,735 x 410 fp32).

Lifetime: the decoder keeps one :class:`PackedSoftmax` per *cache epoch* (the epoch of
:mod:`truncated_bptt.inference_cache`), so the copy is dropped, never reused, as soon as the weights
may change: ``model.train()``, every update, loading a state dict, moving or casting the model.
Gradients never flow through it: only passes without autograd use it.
"""
import functools
from typing import List, Optional, Tuple

import torch
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


def packed_linear(x: Tensor, packed: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``F.linear(x, weight, bias)`` with the weight from :func:`pack`: x ``[N, in]`` -> ``[N, out]``."""
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


class PackedSoftmax:
    """The clusters of a :class:`~truncated_bptt.projected_adaptive_softmax.ProjectedAdaptiveSoftmax`
    with packed weights, as its functions take them: ``clusters[i]`` is (packed weight, bias,
    projection or None). The head's packed weight already holds the rows standing for the tail
    clusters, after its own (so no tail weight is passed separately)."""

    def __init__(self, epoch: int, clusters: List[Tuple[Tensor, Tensor, Optional[Tensor]]]):
        self.epoch = epoch
        self.clusters = clusters
