"""Gathering the training streams' memory of all data-parallel ranks into rank 0's host memory.

A checkpoint holds the memory of every stream, but each rank holds only its own streams' memory, on
its accelerator. Gathering all of it onto rank 0's accelerator first would cost rank 0 W copies of
a rank's memory there (W = world size: about 7 GB for ``wt103_large_multinode`` on 32 GPUs), so it
travels in chunks instead: each collective brings at most ``chunk_bytes`` into one reusable receive
buffer on rank 0, which is copied out to the host tensors the checkpoint is written from.

Bytes (e = bytes per element, n = B*M*d elements of one layer of one rank's memory):

- rank 0, accelerator: the receive buffer, ``W * min(k, n) * e`` with ``k = max(1, chunk_bytes //
  (W * e))``, so at most ``max(chunk_bytes, W * e)`` whatever W is;
- rank 0, host: the result, ``W * L * n * e`` (what the checkpoint stores);
- other ranks: nothing (they send views of their memory), except with a gloo process group and
  memory on an accelerator (gloo gathers only CPU tensors): one chunk of ``k * e`` on the host.

Measured in a gloo simulation by ``benchmarks/checkpoint_memory_bytes.py``.
"""
from typing import List, Optional

import torch
import torch.distributed as dist
from torch import Tensor

CHUNK_BYTES = 64 * 2 ** 20  # one collective's data on rank 0's accelerator


def gather_memory_to_host(
    hiddens: List[Tensor], group=None, chunk_bytes: Optional[int] = None
) -> Optional[List[Tensor]]:
    """Concatenate every rank's memory along the streams, on rank 0's host (collective).

    ``hiddens``: this rank's memory, L tensors [B, M, d] of the same shapes and dtype on every rank
    of ``group`` (None: the default group); ``chunk_bytes``: the budget of one collective on rank
    0 (None: :data:`CHUNK_BYTES`). Returns, on the group's rank 0, L new CPU tensors
    [W*B, M, d] whose rows r*B ... r*B+B-1 come from group rank r; None on the other ranks. Without
    a process group (or with one rank) it returns a CPU copy.
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size(group) == 1:
        return [h.detach().cpu().clone() for h in hiddens]
    world_size, rank = dist.get_world_size(group), dist.get_rank(group)
    dst = dist.get_global_rank(group, 0) if group is not None else 0
    staging = _staging_device(hiddens[0], group)
    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    per_rank = hiddens[0].numel()
    chunk = min(per_rank, max(1, chunk_bytes // (world_size * hiddens[0].element_size())))

    outputs = buffer = None
    if rank == 0:
        outputs = [torch.empty((world_size * h.size(0),) + tuple(h.shape[1:]), dtype=h.dtype)
                   for h in hiddens]
        buffer = torch.empty(world_size, chunk, dtype=hiddens[0].dtype, device=staging)
    for layer, h in enumerate(hiddens):
        flat = h.detach().contiguous().view(-1)  # the memory is contiguous: a view, no copy
        host = outputs[layer].view(world_size, per_rank) if rank == 0 else None
        for start in range(0, per_rank, chunk):
            piece = flat[start:start + chunk].to(staging)  # a view unless gloo meets an accelerator
            size = piece.numel()
            parts = [buffer[r, :size] for r in range(world_size)] if rank == 0 else None
            dist.gather(piece, parts, dst=dst, group=group)
            if rank == 0:
                for r in range(world_size):  # row by row: contiguous copies, no temporary
                    host[r, start:start + size].copy_(buffer[r, :size])
    return outputs


def _staging_device(tensor: Tensor, group) -> torch.device:
    """Where a chunk is gathered: the memory's own device, or the host for gloo (CPU only)."""
    if tensor.device.type != "cpu" and str(dist.get_backend(group)) == "gloo":
        return torch.device("cpu")
    return tensor.device
