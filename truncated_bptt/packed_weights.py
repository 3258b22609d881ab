"""Output-layer weights prepacked for oneDNN's fp32 matrix products, for inference passes on CPU.

Scoring multiplies the same softmax weights by a few rows per segment: the head by the segment's
``B * T`` hidden states, each tail cluster by the few whose targets fall in it (often under ten rows
against ``[23280, d]`` at WikiText's vocabulary). For that skinny shape MKL's ``sgemm`` on the plain
row-major weight runs far below the machine's matmul peak; oneDNN's inner-product kernel on a
weight reordered once into its blocked layout runs the large clusters' products up to about twice
as fast, in fp32 (``benchmarks/softmax_layout.py`` times the layouts with cold caches). The
reordered copy costs the memory of the softmax weights once more while a pass runs: 34 MB for the
benchmark's WikiText-2 model, about 440 MB for ``wt103_base`` (267,735 x 410 fp32).

The tail clusters are packed only for passes whose softmax calls are skinny (at most
:data:`PACK_TAILS_MAX_ROWS` rows; the first call of a cache epoch decides): scoring one segment of
64 tokens at batch 1, generation. A pass of larger steps (fairseq-eval-lm's several segments per
step, batches of several streams, validation) gives each tail cluster tens of rows, which the
plain weights serve almost as fast, and the tails are nearly all of the copy's memory (32 of the
benchmark's 34 MB): ``benchmarks/packed_tails_speed.py`` measures both at 64 to 512 rows a call.
The head (``cutoffs[0]`` rows plus one per tail cluster) is always packed.

Lifetime: the decoder keeps one :class:`PackedSoftmax` per *cache epoch* (the epoch of
:mod:`truncated_bptt.inference_cache`), so the copy is dropped, never reused, as soon as the weights
may change: ``model.train()``, every update, loading a state dict, moving or casting the model.
Gradients never flow through it: only passes without autograd use it.
"""
import functools
from typing import List, Optional, Tuple

import torch
from torch import Tensor


# Largest number of rows a cache epoch's first softmax call may have for the tail clusters to be
# packed too (module docstring; benchmarks/packed_tails_speed.py)
PACK_TAILS_MAX_ROWS = 128


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


def packs_tails(rows: int) -> bool:
    """Whether a cache epoch whose first softmax call has ``rows`` rows packs the tail clusters."""
    return rows <= PACK_TAILS_MAX_ROWS


class PackedSoftmax:
    """The clusters of a :class:`~truncated_bptt.projected_adaptive_softmax.ProjectedAdaptiveSoftmax`
    as its functions take them: ``clusters[i]`` is (weight, bias, projection or None), the head's
    weight packed and already holding the rows standing for the tail clusters, after its own (so no
    tail weight is passed separately); the tails' weights packed too where ``tails_packed``, else
    the plain (detached) parameters."""

    def __init__(self, epoch: int, clusters: List[Tuple[Tensor, Tensor, Optional[Tensor]]]):
        self.epoch = epoch
        self.clusters = clusters
        self.tails_packed = len(clusters) > 1 and all(w.is_mkldnn for w, _, _ in clusters[1:])
