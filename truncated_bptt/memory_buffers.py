"""Memory with room after it, for inference passes: a step writes only its new positions.

Without gradients every step extends each layer's memory (its inputs, and the keys/values cached for
them) by the segment and keeps the last ``mem_len`` positions. With plain tensors that is a copy of
every layer's whole memory per step (``torch.cat``), which at batch 1 costs as much as a large part
of the step's arithmetic. Here the memories are views ``[B, M, ...]`` into buffers
``[B, capacity, ...]``: a step writes its ``T`` positions after them and uses the extended view
``[B, M + T, ...]``; only when the room runs out are the last ``M`` positions copied to the front of
fresh buffers (once every ``(capacity - M) / T`` steps).

Fresh buffers rather than an in-place move, and appending only for the memory whose views end
where the buffers end (:meth:`MemoryBuffers.holds`): positions that some memory's views still cover
are never overwritten, so an older memory used again (a branch) stays correct; it just gets buffers
of its own.
"""
from typing import List

import torch
from torch import Tensor


class MemoryBuffers:
    """One buffer ``[B, capacity, ...]`` per layer for its inputs (``hiddens``) and one for its keys
    and values (``keys_values``), sharing one fill level: positions ``[0, end)`` are written."""

    def __init__(self, hiddens: List[Tensor], keys_values: List[Tensor], capacity: int):
        """Fresh buffers whose positions ``[0, M)`` are copies of the given ``[B, M, ...]`` tensors."""
        self.capacity = capacity
        self.end = hiddens[0].size(1)
        self.hiddens = [self._buffer_with(t) for t in hiddens]
        self.keys_values = [self._buffer_with(t) for t in keys_values]

    def _buffer_with(self, tensor: Tensor) -> Tensor:
        buf = tensor.new_empty(tensor.size(0), self.capacity, *tensor.shape[2:])
        buf[:, : self.end].copy_(tensor)
        return buf

    def holds(self, hiddens: List[Tensor], keys_values: List[Tensor]) -> bool:
        """Whether each given tensor is the view of its buffer that ends at ``end``."""
        if len(hiddens) != len(self.hiddens) or len(keys_values) != len(self.keys_values):
            return False
        pairs = list(zip(hiddens, self.hiddens)) + list(zip(keys_values, self.keys_values))
        for mem, buf in pairs:
            if mem.size(1) > self.end or mem.shape[0] != buf.shape[0] \
                    or mem.data_ptr() != buf[:, self.end - mem.size(1):].data_ptr():
                return False
        return True

    def make_room(self, mlen: int, qlen: int) -> None:
        """Ensure ``qlen`` positions fit after the memory (the last ``mlen`` written positions)."""
        if self.end + qlen <= self.capacity:
            return
        assert mlen + qlen <= self.capacity, "the caller makes buffers large enough"
        for buffers in (self.hiddens, self.keys_values):
            for i, buf in enumerate(buffers):
                fresh = torch.empty_like(buf)
                fresh[:, :mlen].copy_(buf[:, self.end - mlen: self.end])
                buffers[i] = fresh
        self.end = mlen

    @staticmethod
    def extended(buffer: Tensor, end: int, mlen: int, qlen: int) -> Tensor:
        """The view ``[B, mlen + qlen, ...]`` of ``buffer``: the memory, then room for a step."""
        return buffer[:, end - mlen: end + qlen]

    def hidden_view(self, layer: int, mlen: int, qlen: int) -> Tensor:
        return self.extended(self.hiddens[layer], self.end, mlen, qlen)

    def keys_values_view(self, layer: int, mlen: int, qlen: int) -> Tensor:
        return self.extended(self.keys_values[layer], self.end, mlen, qlen)

    def advance(self, qlen: int) -> None:
        """The step has written its ``qlen`` positions into every buffer."""
        self.end += qlen
