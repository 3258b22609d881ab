"""Memory with room after it, for evaluation and generation: a step writes only its new positions.

Without gradients every step extends each layer's memory (its inputs, and the keys/values cached for
them) by the segment and keeps the last ``mem_len`` positions. With plain tensors that is a copy of
every layer's whole memory per step (``torch.cat``), which at batch 1 costs as much as a large part
of the step's arithmetic. Here the memories are views ``[B, M, ...]`` into buffers
``[B, capacity, ...]``: a step writes its ``T`` positions after them and uses the extended view
``[B, M + T, ...]``; only when the room runs out are the last ``M`` positions copied to the front of
fresh buffers (once every ``(capacity - M) / T`` steps).

Fresh buffers rather than an in-place move, and appending only for the state whose memory ends
where the buffers end (:meth:`MemoryBuffers.holds`): positions that some state's views still cover
are never overwritten, so an older state used again (a branch) stays correct; it just gets buffers
of its own.
"""
from typing import Dict

import torch
from torch import Tensor


class MemoryBuffers:
    """Named buffers ``[B, capacity, ...]`` (one per layer input and per layer's keys/values) that
    share one fill level: positions ``[0, end)`` of each are written."""

    def __init__(self, memories: Dict[str, Tensor], capacity: int):
        """Fresh buffers whose positions ``[0, M)`` are copies of ``memories`` (each ``[B, M, ...]``)."""
        self.capacity = capacity
        self.end = next(iter(memories.values())).size(1)
        self.buffers: Dict[str, Tensor] = {}
        for name, mem in memories.items():
            buf = mem.new_empty(mem.size(0), capacity, *mem.shape[2:])
            buf[:, : self.end].copy_(mem)
            self.buffers[name] = buf

    def holds(self, memories: Dict[str, Tensor]) -> bool:
        """Whether each of ``memories`` is the view of its buffer that ends at ``end``."""
        for name, mem in memories.items():
            buf = self.buffers.get(name)
            if buf is None or mem.size(1) > self.end or mem.shape[0] != buf.shape[0] \
                    or mem.data_ptr() != buf[:, self.end - mem.size(1):].data_ptr():
                return False
        return True

    def make_room(self, mlen: int, qlen: int) -> None:
        """Ensure ``qlen`` positions fit after the memory (the last ``mlen`` written positions)."""
        if self.end + qlen <= self.capacity:
            return
        assert mlen + qlen <= self.capacity, "the caller makes buffers large enough"
        for name, buf in self.buffers.items():
            fresh = torch.empty_like(buf)
            fresh[:, :mlen].copy_(buf[:, self.end - mlen: self.end])
            self.buffers[name] = fresh
        self.end = mlen

    def extended(self, name: str, mlen: int, qlen: int) -> Tensor:
        """The view ``[B, mlen + qlen, ...]``: the memory, then room for the step's positions."""
        return self.buffers[name][:, self.end - mlen: self.end + qlen]

    def advance(self, qlen: int) -> None:
        """The step has written its ``qlen`` positions into every buffer."""
        self.end += qlen
