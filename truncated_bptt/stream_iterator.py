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

A position is a step index, so it only means the same text when the split, the number of streams
and ``--tokens-per-sample`` are the ones it was saved with. Those are saved beside it, and resuming
mid-epoch with any of them changed is refused (how the streams are spread over processes may change:
each rank takes its rows of the saved memory). At an epoch boundary nothing carries over and any
change is fine.
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
        if memory_keeper is not None:
            memory_keeper.set_epoch_steps(dataset.memory_key, len(dataset))

    def state_dict(self):
        state = super().state_dict()
        state.update(self._layout())
        if state["iterations_in_epoch"] > 0 and self.memory_keeper is not None:
            mems = self.memory_keeper.memory_for_checkpoint(self.dataset.memory_key)
            if mems is not None:
                state["stream_memory"] = {"memory_key": self.dataset.memory_key, "mems": mems}
        return state

    def _layout(self):
        """What a saved position means: the split (by name and size), S and T."""
        return {
            "split": self.dataset.memory_key,
            "split_tokens": int(self.dataset.stream_lengths.sum()),
            "num_streams": self.dataset.num_streams,
            "tokens_per_sample": self.dataset.tokens_per_sample,
        }

    def load_state_dict(self, state_dict):
        position = state_dict.get("iterations_in_epoch", 0)
        if position > 0:
            check_same_layout(state_dict, self._layout(), position)
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


# What to resume with when a saved layout entry differs (checkpoints from before an entry was
# saved lack it and are not checked for it).
FIXES = {
    "split": lambda v: f"--train-subset {v}",
    "split_tokens": lambda v: f"the same data (a split of {v:,} tokens)",
    "num_streams": lambda v: f"{v} streams in all (--batch-size x number of processes = {v})",
    "tokens_per_sample": lambda v: f"--tokens-per-sample {v}",
}
WHAT = {"split": "split", "split_tokens": "split size in tokens",
        "num_streams": "number of streams", "tokens_per_sample": "--tokens-per-sample"}


def check_same_layout(saved_state, layout, position):
    """Refuse, in one line, to resume mid-epoch at ``position`` with another stream layout."""
    changed = [k for k, v in layout.items() if k in saved_state and saved_state[k] != v]
    if not changed:
        return
    differences = ", ".join(f"{WHAT[k]} {saved_state[k]} -> {layout[k]}" for k in changed)
    fixes = " and ".join(FIXES[k](saved_state[k]) for k in changed)
    raise ValueError(
        f"the checkpoint stopped mid-epoch (step {position}) in another stream layout than this "
        f"run's ({differences}), so its position and memory would not match the text: resume with "
        f"{fixes}, or pass --reset-dataloader to restart the epoch (dropping that position and memory)"
    )
