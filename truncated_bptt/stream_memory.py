"""Keeps the training streams' Transformer-XL memory consistent with checkpoints, on every rank.

A mid-epoch checkpoint must hold, besides the position in the streams, the memory each stream has
built up, or a resumed run would continue its streams with empty memory. fairseq writes checkpoints
on data-parallel rank 0 only, and calls nothing on the other ranks at that moment (outside FSDP),
so the memory of all ranks is gathered to rank 0 earlier, at points where all ranks take part:

- after the optimizer step of an update that may be followed by a checkpoint (every
  ``--save-interval-updates`` updates, and at ``--max-update``);
- at the start of every validation (fairseq validates before every mid-epoch save it makes for
  other reasons, e.g. ``--stop-time-hours`` or patience).

A snapshot is only used if no training segment was processed after it; otherwise the checkpoint is
written without memory and a warning says so (resuming from it then starts with empty memory).
With a single process no gathering is needed: the live memory is read at save time.

On resume each rank receives its own streams' rows, which are handed to the model just before its
first training forward.
"""
import logging
from typing import List, Optional

import torch
from fairseq.distributed import utils as distributed_utils

from truncated_bptt.memory import XLMemory

logger = logging.getLogger(__name__)


def _decoder(model):
    """The model's decoder through fairseq's data-parallel wrappers (which forward attributes)."""
    return model.decoder


class StreamMemoryKeeper:
    """Snapshots, gathers and restores the memory of the training streams.

    The model's memory is an :class:`~truncated_bptt.memory.XLMemory` of this rank's B streams;
    checkpoints hold a list (one entry per layer) of [S, M, d_model] CPU tensors, rows in global
    stream order (rank r's rows are r*B ... r*B+B-1).

    ``save_interval_updates`` / ``max_update``: fairseq's options, which decide after which updates
    a checkpoint may be written (0: unset).
    """

    def __init__(self, save_interval_updates: int = 0, max_update: int = 0):
        self.save_interval_updates = save_interval_updates
        self.max_update = max_update
        self.model = None
        self.train_key: Optional[str] = None
        self.segments_seen = 0  # training segments processed by this process
        self._snapshot = None  # (segments_seen, memory_key, gathered memory or None)
        self._pending = None  # (memory_key, segment_index, this rank's memory)

    # ---- called by the task around training steps ----------------------------------------
    def before_train_forward(self, model, sample):
        """Remember the model; hand it restored memory when its stream position comes up."""
        self.model = model
        net_input = sample["net_input"]
        self.train_key = net_input["memory_key"]
        if self._pending is None:
            return
        key, segment_index, mems = self._pending
        self._pending = None
        if key != net_input["memory_key"] or segment_index != net_input["segment_index"]:
            logger.warning(
                "restored stream memory is for %s segment %d but training continues at %s "
                "segment %d; starting with empty memory",
                key, segment_index, net_input["memory_key"], net_input["segment_index"],
            )
            return
        device = next(model.parameters()).device
        _decoder(model).set_stream_memory(key, XLMemory.from_checkpoint(mems, device))

    def after_train_forward(self):
        self.segments_seen += 1

    # ---- the snapshot policy: when other ranks' memory must reach rank 0 ----------------------
    def after_update(self, num_updates: int):
        """After the optimizer step of update ``num_updates``: snapshot if a checkpoint may follow."""
        every, last = self.save_interval_updates, self.max_update
        if (every > 0 and num_updates % every == 0) or (last > 0 and num_updates >= last):
            self._snapshot_if_distributed()

    def before_validation(self):
        """fairseq validates before every mid-epoch checkpoint it writes for other reasons."""
        self._snapshot_if_distributed()

    def _snapshot_if_distributed(self):
        if distributed_utils.get_data_parallel_world_size() > 1:
            self.snapshot()

    # ---- checkpoint writing ------------------------------------------------------------------
    def snapshot(self):
        """Gather the training memory of all data-parallel ranks onto rank 0 (collective)."""
        if self.model is None or self.train_key is None:
            return
        group = distributed_utils.get_data_parallel_group()
        world_size = distributed_utils.get_world_size(group)
        memory = _decoder(self.model).get_stream_memory(self.train_key)
        gathered = None
        if memory is not None:
            gathered = gather_rows(torch.stack([h.detach() for h in memory.hiddens]), group,
                                   world_size)
        self._snapshot = (self.segments_seen, self.train_key, gathered)

    def memory_for_checkpoint(self, memory_key) -> Optional[List[torch.Tensor]]:
        """Memory of all S streams of ``memory_key`` at the current position (on rank 0), or None."""
        if self.model is None or memory_key != self.train_key:
            return None
        if distributed_utils.get_data_parallel_world_size() == 1:
            memory = _decoder(self.model).get_stream_memory(memory_key)
            return memory.to_checkpoint() if memory is not None else None
        if self._snapshot is not None:
            seen, key, gathered = self._snapshot
            if seen == self.segments_seen and key == memory_key:
                return list(gathered.unbind(0)) if gathered is not None else None
        logger.warning(
            "the memory of the training streams of other ranks was not gathered for this "
            "checkpoint (neither a --save-interval-updates/--max-update boundary nor a "
            "validation preceded it); resuming from it will start the streams with empty memory"
        )
        return None

    # ---- checkpoint reading ------------------------------------------------------------------
    def restore(self, memory_key, segment_index, mems: List[torch.Tensor]):
        """Give this rank's rows of ``memory_key`` to the model before it reads ``segment_index``."""
        self._pending = (memory_key, segment_index, mems)


def gather_rows(tensor, group, world_size):
    """Concatenate ``tensor`` [L, B, M, d] of all ranks along B onto data-parallel rank 0, on CPU.

    Returns [L, W*B, M, d] on rank 0 and None elsewhere (the tensor itself when not distributed).
    """
    if world_size == 1:
        return tensor.cpu().clone()
    rank = distributed_utils.get_rank(group)
    dst = torch.distributed.get_global_rank(group, 0)
    parts = [torch.empty_like(tensor) for _ in range(world_size)] if rank == 0 else None
    torch.distributed.gather(tensor.contiguous(), parts, dst=dst, group=group)
    if rank != 0:
        return None
    return torch.cat([p.cpu() for p in parts], dim=1)
