"""fairseq's EpochBatchIterator over a StreamDataset, with the streams' memory in its checkpoint state.

Each item of a :class:`~truncated_bptt.stream_dataset.StreamDataset` is a whole step, so the batch
sampler is ``[[0], [1], ...]`` and fairseq's own iterator state (``iterations_in_epoch``) is the
exact stream position: ``--restore-file`` resumes at the next step, ``--num-workers`` keeps the
order, and nothing is ever shuffled.

The position alone is not enough for exact resumption: the model's memory at that position is part
of the streams' state. fairseq restores exactly one piece of task-provided state on every rank when
it resumes training, the training iterator's state (``extra_state["train_iterator"]``;
``Trainer.load_checkpoint`` never calls ``task.load_state_dict``), so the memory travels there,
with the position it belongs to. ``--reset-dataloader`` drops both together.
"""
import logging

from fairseq.data import iterators

logger = logging.getLogger(__name__)


class StreamEpochBatchIterator(iterators.EpochBatchIterator):
    """Iterates the steps of ``dataset`` in order; ``memory_keeper`` (a StreamMemoryKeeper or
    None) provides the memory for :meth:`state_dict` and receives it in :meth:`load_state_dict`."""

    def __init__(
        self, dataset, epoch=1, num_workers=0, buffer_size=0, skip_remainder_batch=False,
        memory_keeper=None,
    ):
        super().__init__(
            dataset=dataset,
            collate_fn=dataset.collater,
            batch_sampler=[[step] for step in range(len(dataset))],
            num_shards=1,  # the dataset already holds only this rank's streams
            shard_id=0,
            num_workers=num_workers,
            epoch=epoch,
            buffer_size=buffer_size,
            disable_shuffling=True,
            skip_remainder_batch=skip_remainder_batch,
        )
        self.memory_keeper = memory_keeper

    def state_dict(self):
        state = super().state_dict()
        state["num_streams"] = self.dataset.num_streams
        if state["iterations_in_epoch"] > 0 and self.memory_keeper is not None:
            mems = self.memory_keeper.memory_for_checkpoint(self.dataset.memory_key)
            if mems is not None:
                state["stream_memory"] = {"memory_key": self.dataset.memory_key, "mems": mems}
        return state

    def load_state_dict(self, state_dict):
        position = state_dict.get("iterations_in_epoch", 0)
        saved_streams = state_dict.get("num_streams")
        if position > 0 and saved_streams is not None and saved_streams != self.dataset.num_streams:
            raise ValueError(
                f"the checkpoint stopped mid-epoch in {saved_streams} streams, but this run cuts "
                f"the data into {self.dataset.num_streams} (--batch-size x number of GPUs): resume "
                f"with the same total, or pass --reset-dataloader to restart the epoch"
            )
        super().load_state_dict(state_dict)
        saved = state_dict.get("stream_memory")
        if position > 0 and saved is not None and self.memory_keeper is not None:
            rows = slice(
                self.dataset.shard_id * self.dataset.batch_size,
                (self.dataset.shard_id + 1) * self.dataset.batch_size,
            )
            self.memory_keeper.restore(
                saved["memory_key"], position, [m[rows] for m in saved["mems"]]
            )
            logger.info(
                "restored the memory of streams %d-%d at step %d",
                rows.start, rows.stop - 1, position,
            )
