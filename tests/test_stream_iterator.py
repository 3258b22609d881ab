"""StreamEpochBatchIterator: fairseq's EpochBatchIterator over whole-step items, in order, with the
streams' memory in its state."""
import pytest
import torch

from truncated_bptt.stream_dataset import StreamDataset
from truncated_bptt.stream_iterator import StreamEpochBatchIterator

PAD, EOS = 1, 2


def dataset(n=101, tps=4, batch_size=2, num_shards=1, shard_id=0):
    return StreamDataset(torch.arange(10, 10 + n), tps, batch_size, num_shards, shard_id,
                         pad=PAD, eos=EOS, memory_key="train")


def targets(itr):
    return [b["target"].tolist() for b in itr]


class RecordingKeeper:
    def __init__(self, mems=None):
        self.mems, self.restored, self.epoch_steps = mems, None, {}

    def set_epoch_steps(self, memory_key, steps):
        self.epoch_steps[memory_key] = steps

    def memory_for_checkpoint(self, memory_key):
        return self.mems

    def restore(self, memory_key, segment_index, mems):
        self.restored = (memory_key, segment_index, mems)


def test_every_epoch_is_in_order_and_never_shuffled():
    ds = dataset()
    it = StreamEpochBatchIterator(ds)
    expected = [ds[i]["target"].tolist() for i in range(len(ds))]
    for epoch in (1, 2, 3):
        epoch_itr = it.next_epoch_itr(shuffle=True)  # fairseq-train asks for shuffling
        batches = list(epoch_itr)
        assert [b["target"].tolist() for b in batches] == expected
        assert [b["net_input"]["segment_index"] for b in batches] == list(range(len(ds)))
        assert it.epoch == epoch


def test_workers_give_the_same_batches():
    plain = targets(StreamEpochBatchIterator(dataset()).next_epoch_itr())
    workers = targets(StreamEpochBatchIterator(dataset(), num_workers=2).next_epoch_itr())
    buffered = targets(StreamEpochBatchIterator(dataset(), buffer_size=3).next_epoch_itr())
    assert plain == workers == buffered


def test_state_resumes_at_the_next_step_and_hands_back_this_ranks_rows():
    mems = [torch.arange(4 * 3 * 2.0).view(4, 3, 2) + 100 * layer for layer in range(2)]
    it = StreamEpochBatchIterator(dataset(num_shards=2, shard_id=0), memory_keeper=RecordingKeeper(mems))
    assert it.memory_keeper.epoch_steps == {"train": len(it.dataset)}  # when the epoch ends
    epoch_itr = it.next_epoch_itr()
    seen = [next(epoch_itr) for _ in range(5)]
    state = it.state_dict()
    assert state["iterations_in_epoch"] == 5 and state["num_streams"] == 4
    assert state["stream_memory"]["memory_key"] == "train"

    keeper = RecordingKeeper()
    resumed = StreamEpochBatchIterator(dataset(num_shards=2, shard_id=1), memory_keeper=keeper)
    resumed.load_state_dict(state)
    rest = list(resumed.next_epoch_itr())
    assert rest[0]["net_input"]["segment_index"] == 5
    assert [b["target"].tolist() for b in rest] == [
        dataset(num_shards=2, shard_id=1)[i]["target"].tolist() for i in range(5, len(rest) + 5)
    ]
    key, segment_index, restored = keeper.restored
    assert (key, segment_index) == ("train", 5)
    for layer in range(2):
        assert torch.equal(restored[layer], mems[layer][2:4])  # rank 1 owns streams 2 and 3
    # Before and after the checkpoint together: every step of the epoch once, in order.
    steps = [b["net_input"]["segment_index"] for b in seen + rest]
    assert steps == list(range(len(dataset(num_shards=2, shard_id=1))))


def test_end_of_epoch_state_needs_no_memory():
    it = StreamEpochBatchIterator(dataset(), memory_keeper=RecordingKeeper([torch.zeros(2, 1, 1)]))
    list(it.next_epoch_itr())
    state = it.state_dict()
    assert state["iterations_in_epoch"] == 0 and "stream_memory" not in state


def test_resuming_mid_epoch_with_other_streams_is_refused():
    it = StreamEpochBatchIterator(dataset(batch_size=2))
    epoch_itr = it.next_epoch_itr()
    next(epoch_itr)
    state = it.state_dict()
    other = StreamEpochBatchIterator(dataset(batch_size=3))
    with pytest.raises(ValueError, match=r"stopped mid-epoch \(step 1\).*number of streams 2 -> 3.*"
                                         r"resume with 2 streams in all.*--reset-dataloader"):
        other.load_state_dict(state)
    # the same total split differently over processes is fine
    StreamEpochBatchIterator(dataset(batch_size=1, num_shards=2, shard_id=1)).load_state_dict(state)


def mid_epoch_state(**layout):
    it = StreamEpochBatchIterator(dataset(**layout))
    epoch_itr = it.next_epoch_itr()
    next(epoch_itr)
    next(epoch_itr)
    return it.state_dict()


@pytest.mark.parametrize("changed, message", [
    (dict(tps=5), r"\(--tokens-per-sample 4 -> 5\).*resume with --tokens-per-sample 4, or pass "
                  r"--reset-dataloader"),
    (dict(n=120), r"\(split size in tokens 101 -> 120\).*resume with the same data \(a split of "
                  r"101 tokens\)"),
])
def test_resuming_mid_epoch_with_another_segment_length_or_data_is_refused(changed, message):
    """A saved position is a step index: with another --tokens-per-sample or another split it
    would point at other text than the saved memory belongs to."""
    state = mid_epoch_state()
    assert (state["split"], state["split_tokens"], state["num_streams"],
            state["tokens_per_sample"]) == ("train", 101, 2, 4)
    with pytest.raises(ValueError, match=message) as err:
        StreamEpochBatchIterator(dataset(**changed)).load_state_dict(state)
    assert "\n" not in str(err.value)

    renamed = StreamDataset(torch.arange(10, 111), 4, 2, pad=PAD, eos=EOS, memory_key="train2")
    with pytest.raises(ValueError, match=r"\(split train -> train2\).*--train-subset train"):
        StreamEpochBatchIterator(renamed).load_state_dict(state)


def test_epoch_boundaries_and_older_checkpoints_are_not_refused():
    """Nothing carries over an epoch boundary, so any layout may follow it; states saved before
    the layout was recorded are checked for what they hold (the number of streams)."""
    it = StreamEpochBatchIterator(dataset())
    list(it.next_epoch_itr())
    StreamEpochBatchIterator(dataset(tps=7, batch_size=3)).load_state_dict(it.state_dict())
    older = {k: v for k, v in mid_epoch_state().items()
             if k not in ("split", "split_tokens", "tokens_per_sample")}
    resumed = StreamEpochBatchIterator(dataset(tps=5))
    resumed.load_state_dict(older)
    assert next(resumed.next_epoch_itr())["net_input"]["segment_index"] == 2
