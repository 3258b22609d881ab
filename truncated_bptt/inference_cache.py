"""What an inference pass computes once and reuses: the one cache of the model.

An *inference pass* is a run of segments without gradients in eval mode with one set of weights:
an evaluation pass over a split (fairseq-train's validation, fairseq-eval-lm), or one generation
(fairseq-generate / -interactive). Within it consecutive segments share

- the attention mask and position encodings of each shape (they depend on shapes and options only),
  and, outside half precision, the index that realigns the position scores and applies the mask
  (:func:`~truncated_bptt.relative_attention.position_index`),
- every layer's position keys ``r_net(encodings)`` of each shape (they depend on the weights),
- the keys and values of the memory, kept beside it (:class:`~truncated_bptt.memory.XLMemory`) and
  grown in place (:class:`~truncated_bptt.memory_buffers.MemoryBuffers`), so a segment never
  recomputes or copies those of the whole memory.

Lifetime (explicit, never inferred from tensors): the decoder creates an :class:`InferenceCache`
when a pass starts (segment 0 of a stream without gradients, the first step of a generation) and
stops using it as soon as the weights may change: ``model.train()``, every update
(``set_num_updates``, which fairseq's trainer calls after each optimizer step), loading a state
dict, or changing the memory options. Each of those advances the decoder's *cache epoch*; a cache
of an older epoch is never used again, and keys/values in a memory are used only by the pass that
computed them (``XLMemory.pass_serial``). The training path (gradients on) uses no cache at all.
"""
import itertools
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from truncated_bptt.memory import XLMemory
from truncated_bptt.memory_buffers import MemoryBuffers
from truncated_bptt.relative_attention import position_index

_SERIALS = itertools.count(1)


class InferenceCache:
    """The cache of one inference pass; ``epoch`` is the decoder's cache epoch when it was made."""

    def __init__(self, epoch: int):
        self.epoch = epoch
        self.serial = next(_SERIALS)  # tags the keys/values this pass stores in memories
        self._mask_and_encodings: Dict[tuple, Tuple[Optional[Tensor], Tensor]] = {}
        self._position_keys: Dict[tuple, List[Tensor]] = {}
        self._position_index: Dict[tuple, Tensor] = {}

    def mask_and_encodings(self, qlen: int, mlen: int, like: Tensor,
                           make: Callable[[int, int, Tensor], Tuple[Optional[Tensor], Tensor]]
                           ) -> Tuple[Optional[Tensor], Tensor]:
        """``make(qlen, mlen, like)``, computed once per shape (callers must not modify the result)."""
        key = (qlen, mlen, like.dtype, like.device)
        if key not in self._mask_and_encodings:
            if len(self._mask_and_encodings) >= 16:  # generation: a new key length every step
                self._mask_and_encodings.clear()
            self._mask_and_encodings[key] = make(qlen, mlen, like)
        return self._mask_and_encodings[key]

    def position_index(self, qlen: int, mlen: int, positions: int, mask: Optional[Tensor],
                       device: torch.device) -> Tensor:
        """:func:`~truncated_bptt.relative_attention.position_index` of this shape, made once (the
        mask is this cache's own for the same shape, so the key determines it too)."""
        key = (qlen, mlen, positions, device)
        if key not in self._position_index:
            if len(self._position_index) >= 16:  # generation: a new key length every step
                self._position_index.clear()
            self._position_index[key] = position_index(qlen, mlen, positions, mask, device)
        return self._position_index[key]

    def position_keys(self, layers: nn.ModuleList, encodings: Tensor) -> List[Tensor]:
        """Every layer's ``r_net(encodings)`` ``[K + 1, n_head * d_head]`` (a transposed view), one
        GEMM for all layers."""
        key = (encodings.shape, encodings.dtype, encodings.device)
        if key not in self._position_keys:
            if len(self._position_keys) >= 16:
                self._position_keys.clear()
            weight = torch.cat([layer.attn.r_net.weight for layer in layers], dim=0)
            sizes = [layer.attn.r_net.out_features for layer in layers]
            # Stored transposed: each layer's keys are a view of a contiguous
            # [n_head * d_head, K + 1], so the [n_head, d_head, K + 1] operand of the attention's
            # position GEMM is contiguous (strided, BLAS reads it markedly slower at scoring sizes).
            keys = torch.matmul(weight, encodings.t()).split(sizes, dim=0)
            self._position_keys[key] = [k.t() for k in keys]
        return self._position_keys[key]


class GrowingWriter:
    """Builds the memory after a segment inside buffers with room (inference passes).

    The memory's keys/values are reused if this pass computed them, else computed once from its
    hidden states. For each layer, :meth:`layer_input` writes the layer's input after its memory and
    returns ``(None, keys_values)``: the view ``[B, M + T, 2, n_head, d_head]`` whose first ``M``
    positions hold the memory's keys/values and whose rest the layer fills
    (:meth:`RelativeMultiHeadAttention.forward`). :meth:`memory_after` returns the last ``mem_len``
    positions as views, with their keys/values, tagged with this pass.
    """

    def __init__(self, layers: nn.ModuleList, memory: Optional[XLMemory], qlen: int, mem_len: int,
                 cache: InferenceCache, like: Tensor):
        """like: the segment's embedded input ``[B, T, d_model]`` (batch size, dtype, device)."""
        self.qlen, self.cache = qlen, cache
        hiddens, keys_values = self._memory_tensors(layers, memory, like)
        self.mlen = hiddens[0].size(1)
        buffers = memory.storage if memory is not None else None
        if not (isinstance(buffers, MemoryBuffers) and buffers.holds(hiddens, keys_values)
                and self.mlen + qlen <= buffers.capacity):
            # room for mem_len / qlen steps (or mem_len single tokens) between compactions
            capacity = max(self.mlen, mem_len) + max(qlen, mem_len)
            buffers = MemoryBuffers(hiddens, keys_values, capacity)
        buffers.make_room(self.mlen, qlen)
        self.buffers = buffers
        self.views: List[Tuple[Tensor, Tensor]] = []

    def _memory_tensors(self, layers, memory: Optional[XLMemory], like: Tensor):
        """The memory's hidden states and keys/values (``[B, 0, ...]`` when there is none)."""
        if memory is None:
            hidden = like.new_empty(like.size(0), 0, like.size(2))
            return [hidden] * len(layers), [
                like.new_empty(like.size(0), 0, 2, layer.attn.n_head, layer.attn.d_head)
                for layer in layers
            ]
        keys_values = memory.keys_values_of_pass(self.cache.serial)
        if keys_values is None:
            keys_values = [layer.attn.memory_keys_values(h) for layer, h in zip(layers, memory.hiddens)]
        return memory.hiddens, keys_values

    def layer_input(self, layer: int, h: Tensor):
        hidden = self.buffers.hidden_view(layer, self.mlen, self.qlen)
        hidden[:, self.mlen:].copy_(h)
        keys_values = self.buffers.keys_values_view(layer, self.mlen, self.qlen)
        self.views.append((hidden, keys_values))
        return None, keys_values

    def memory_after(self, mem_len: int) -> XLMemory:
        self.buffers.advance(self.qlen)
        return XLMemory(
            hiddens=[hidden[:, -mem_len:] for hidden, _ in self.views],
            keys_values=[kv[:, -mem_len:] for _, kv in self.views],
            pass_serial=self.cache.serial,
            storage=self.buffers,
        )
