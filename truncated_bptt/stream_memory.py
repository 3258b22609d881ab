"""Keeps the training streams' Transformer-XL memory consistent with checkpoints, on every rank.

A mid-epoch checkpoint must hold, besides the position in the streams, the memory each stream has
built up, or a resumed run would continue its streams with empty memory. fairseq writes checkpoints
on data-parallel rank 0 only, and calls nothing on the other ranks at that moment (outside FSDP),
so the memory of all ranks is gathered to rank 0's host earlier, at a point where all ranks take
part, and only when a mid-epoch checkpoint will follow (:mod:`truncated_bptt.checkpoint_schedule`):

- after the optimizer step of an update after which fairseq saves mid-epoch
  (``--save-interval-updates``, ``--max-update``);
- at the start of a mid-epoch validation when ``--patience`` or ``--stop-time-hours`` may make
  fairseq save after it;
- with fp16 loss scaling, also after each training segment of the update that follows such a save:
  if that update overflows, fairseq saves again at the same update count with one segment more,
  and nothing runs on every rank between the overflow and that save.

The gather goes through rank 0's host in chunks (:mod:`truncated_bptt.memory_gather`), so rank 0's
accelerator holds at most one chunk of it whatever the number of ranks. A gathered snapshot is used
only if no training segment was processed after it (it is dropped at the next segment); a mid-epoch
checkpoint without one (``--stop-time-hours`` with ``--disable-validation``) is written without
memory and a warning says so. With a single process nothing is gathered: the live memory is read
at save time.

On resume each rank receives its own streams' rows, which are handed to the model just before its
first training forward.
"""
import logging
from typing import Dict, List, NamedTuple, Optional

import torch
from fairseq.distributed import utils as distributed_utils

from truncated_bptt.checkpoint_schedule import SaveSchedule
from truncated_bptt.memory import XLMemory
from truncated_bptt.memory_gather import gather_memory_to_host

logger = logging.getLogger(__name__)


def _decoder(model):
    """The model's decoder through fairseq's data-parallel wrappers (which forward attributes)."""
    return model.decoder


class Snapshot(NamedTuple):
    """The memory of all streams of ``memory_key`` after ``segments_seen`` training segments
    (rank 0: n_layer CPU tensors [S, M, d]; other ranks and memory-less models: None)."""
    segments_seen: int
    memory_key: str
    mems: Optional[List[torch.Tensor]]


class StreamMemoryKeeper:
    """Snapshots, gathers and restores the memory of the training streams.

    The model's memory is an :class:`~truncated_bptt.memory.XLMemory` of this rank's B streams;
    checkpoints hold a list (one entry per layer) of [S, M, d_model] CPU tensors, rows in global
    stream order (rank r's rows are r*B ... r*B+B-1).

    ``schedule``: when fairseq-train saves. ``loss_scaling``: training with fp16 loss scaling
    (``--fp16`` or ``--amp``, not ``--bf16``), whose overflowing updates repeat a save.
    """

    def __init__(self, schedule: SaveSchedule = SaveSchedule(), loss_scaling: bool = False):
        self.schedule = schedule
        self.loss_scaling = loss_scaling
        self.model = None
        self.train_key: Optional[str] = None
        self.segments_seen = 0  # training segments processed by this process
        self.position = 0  # steps of the training epoch read so far
        self.num_updates = 0  # updates completed (as the optimizer steps count them)
        self.epoch_steps: Dict[str, int] = {}  # memory_key -> steps of its current epoch
        self._saved_after: Optional[int] = None  # update count of the last announced save
        self._snapshot: Optional[Snapshot] = None
        self._pending = None  # (memory_key, segment_index, this rank's memory)

    def set_epoch_steps(self, memory_key: str, steps: int):
        """The number of steps of the epoch about to be read from ``memory_key``."""
        self.epoch_steps[memory_key] = steps

    # ---- called by the task around training steps ----------------------------------------
    def before_train_forward(self, model, sample):
        """Remember the model; hand it restored memory when its stream position comes up."""
        self.model = model
        net_input = sample["net_input"]
        self.train_key = net_input["memory_key"]
        self.position = net_input["segment_index"] + 1
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

    def after_train_forward(self, update_num: int):
        """After the training segment of update ``update_num`` (counted from 0)."""
        self.segments_seen += 1
        self._snapshot = None  # stale now; frees rank 0's copy
        if self.loss_scaling and update_num == self._saved_after and not self._end_of_epoch():
            self._snapshot_if_distributed("in case this update overflows")

    # ---- the snapshot policy: when other ranks' memory must reach rank 0 ----------------------
    def after_update(self, num_updates: int):
        """After the optimizer step that completes update ``num_updates``."""
        self.num_updates = num_updates
        if self.schedule.saves_mid_epoch_after_update(num_updates, self._end_of_epoch()):
            self._saved_after = num_updates
            self._snapshot_if_distributed("for the checkpoint")

    def before_validation(self):
        if self._snapshot is None and self.schedule.may_save_mid_epoch_after_validation(
                self._end_of_epoch()):
            self._snapshot_if_distributed("in case a checkpoint follows this validation")

    def _end_of_epoch(self) -> bool:
        steps = self.epoch_steps.get(self.train_key)
        return steps is not None and self.position >= steps

    def _snapshot_if_distributed(self, why: str):
        if distributed_utils.get_data_parallel_world_size() > 1:
            self.snapshot(why)

    # ---- checkpoint writing ------------------------------------------------------------------
    def snapshot(self, why: str = ""):
        """Gather the training memory of all data-parallel ranks onto rank 0's host (collective)."""
        if self.model is None or self.train_key is None:
            return
        memory = _decoder(self.model).get_stream_memory(self.train_key)
        mems = None
        if memory is not None:
            group = distributed_utils.get_data_parallel_group()
            mems = gather_memory_to_host(memory.hiddens, group)
            if mems is not None:
                logger.info(
                    "gathered the memory of %d training streams (%.1f MiB) to the host at update "
                    "%d, %s", mems[0].size(0),
                    sum(m.numel() * m.element_size() for m in mems) / 2 ** 20, self.num_updates,
                    why,
                )
        self._snapshot = Snapshot(self.segments_seen, self.train_key, mems)

    def memory_for_checkpoint(self, memory_key) -> Optional[List[torch.Tensor]]:
        """Memory of all S streams of ``memory_key`` at the current position (on rank 0), or None."""
        if self.model is None or memory_key != self.train_key:
            return None
        if distributed_utils.get_data_parallel_world_size() == 1:
            memory = _decoder(self.model).get_stream_memory(memory_key)
            return memory.to_checkpoint() if memory is not None else None
        snap = self._snapshot
        if snap is not None and snap.segments_seen == self.segments_seen and snap.memory_key == memory_key:
            return snap.mems
        logger.warning(
            "the memory of the training streams of other ranks was not gathered for this "
            "mid-epoch checkpoint (it was not announced by --save-interval-updates, --max-update "
            "or a validation, e.g. --stop-time-hours with --disable-validation); resuming from it "
            "will start the streams with empty memory"
        )
        return None

    # ---- checkpoint reading ------------------------------------------------------------------
    def restore(self, memory_key, segment_index, mems: List[torch.Tensor]):
        """Give this rank's rows of ``memory_key`` to the model before it reads ``segment_index``."""
        self._pending = (memory_key, segment_index, mems)
