"""StreamMemoryKeeper with a stand-in decoder that implements the model's stream-memory API.

The policy tests pretend to be rank 0 of two data-parallel ranks and record the gathers (the gather
itself: tests/test_memory_gather.py; the real calls of fairseq-train under torchrun, fp16 overflow
included: tests/test_truncated_bptt_lm_task.py)."""
import logging

import pytest
import torch
from torch import nn

from truncated_bptt import stream_memory
from truncated_bptt.checkpoint_schedule import SaveSchedule
from truncated_bptt.memory import XLMemory
from truncated_bptt.stream_memory import StreamMemoryKeeper


class FakeDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.memory = {}

    def get_stream_memory(self, key):
        return self.memory.get(key)

    def set_stream_memory(self, key, memory):
        self.memory[key] = memory


class FakeModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.decoder = FakeDecoder()


def sample(key, segment_index):
    return {"net_input": {"memory_key": key, "segment_index": segment_index}}


def test_restored_memory_is_handed_over_at_its_segment():
    model, keeper = FakeModel(), StreamMemoryKeeper()
    mems = [torch.ones(2, 3, 4), 2 * torch.ones(2, 3, 4)]
    keeper.restore("train", 7, mems)
    keeper.before_train_forward(model, sample("train", 7))
    assert all(torch.equal(a, b) for a, b in zip(model.decoder.memory["train"].hiddens, mems))
    model.decoder.memory.clear()
    keeper.before_train_forward(model, sample("train", 8))  # handed over once only
    assert "train" not in model.decoder.memory


def test_restored_memory_for_another_position_is_dropped_with_a_warning(caplog):
    model, keeper = FakeModel(), StreamMemoryKeeper()
    keeper.restore("train", 7, [torch.ones(1, 1, 1)])
    with caplog.at_level(logging.WARNING):
        keeper.before_train_forward(model, sample("train", 0))
    assert "starting with empty memory" in caplog.text
    assert "train" not in model.decoder.memory


def test_single_process_checkpoints_the_live_memory_of_the_training_key_only():
    model, keeper = FakeModel(), StreamMemoryKeeper()
    keeper.before_train_forward(model, sample("train", 0))
    model.decoder.memory["train"] = XLMemory([torch.full((2, 3, 4), 5.0)])
    model.decoder.memory["valid"] = XLMemory([torch.zeros(2, 3, 4)])
    keeper.after_train_forward(0)
    saved = keeper.memory_for_checkpoint("train")
    assert torch.equal(saved[0], torch.full((2, 3, 4), 5.0))
    saved[0].zero_()  # a copy: saving never aliases the live memory
    assert model.decoder.memory["train"].hiddens[0].eq(5).all()
    assert keeper.memory_for_checkpoint("valid") is None


def test_the_task_runs_fairseqs_stand_in_batches_without_memory():
    """A dummy batch (ignore_grad) must neither reset nor advance the training streams."""
    from truncated_bptt.truncated_bptt_lm_task import TruncatedBPTTLMConfig, TruncatedBPTTLMTask

    seen = []

    class Criterion:
        def __call__(self, model, sample):
            seen.append(sample["net_input"]["memory_key"])
            return torch.zeros((), requires_grad=True) * 1.0, 1, {}

    class Optimizer:
        def backward(self, loss):
            loss.backward()

    task = TruncatedBPTTLMTask.__new__(TruncatedBPTTLMTask)
    task.cfg = TruncatedBPTTLMConfig(release_freed_memory=True)  # (the allocator is not the point)
    task.memory_keeper = StreamMemoryKeeper()
    model = FakeModel()
    model.set_num_updates = lambda n: None
    task.train_step(sample("train", 0), model, Criterion(), Optimizer(), 0, ignore_grad=True)
    assert seen == [None] and task.memory_keeper.segments_seen == 0
    task.train_step(sample("train", 3), model, Criterion(), Optimizer(), 0)
    assert seen == [None, "train"] and task.memory_keeper.segments_seen == 1


# ---------------------------------------------------------------- when the memory is gathered
class TwoRanks:
    """Rank 0 of two: the gather returns this rank's rows followed by "rank 1's" (+1000)."""

    def __init__(self, monkeypatch):
        self.gathers = []  # keeper.num_updates at each gather
        monkeypatch.setattr(stream_memory.distributed_utils, "get_data_parallel_world_size", lambda: 2)
        monkeypatch.setattr(stream_memory.distributed_utils, "get_data_parallel_group", lambda: None)
        monkeypatch.setattr(stream_memory, "gather_memory_to_host", self.gather)
        self.keeper = None

    def gather(self, hiddens, group):
        self.gathers.append(self.keeper.num_updates)
        return [torch.cat([h, h + 1000]) for h in hiddens]


class Training:
    """Calls the keeper as the task does for fairseq-train, one segment per update."""

    def __init__(self, keeper, epoch_steps):
        self.keeper, self.model, self.segment = keeper, FakeModel(), 0
        keeper.set_epoch_steps("train", epoch_steps)
        self.epoch_steps = epoch_steps

    def segment_forward(self, update_num):
        """One training segment of the update numbered ``update_num`` (from 0)."""
        self.keeper.before_train_forward(self.model, sample("train", self.segment))
        self.model.decoder.memory["train"] = XLMemory([torch.full((2, 3, 4), float(self.segment))])
        self.keeper.after_train_forward(update_num)
        self.segment = (self.segment + 1) % self.epoch_steps

    def live_rows(self):
        h = self.model.decoder.memory["train"].hiddens[0]
        return torch.cat([h, h + 1000])


@pytest.mark.parametrize("patience", [-1, 2])
def test_memory_is_gathered_only_for_the_mid_epoch_checkpoints_fairseq_writes(monkeypatch, patience):
    """8 steps per epoch, --save-interval-updates 4, --max-update 11, a validation after every
    update: fairseq writes mid-epoch checkpoints after updates 4 and 11 (its save after 8 ends the
    epoch: no memory); with --patience any mid-epoch validation may be followed by one."""
    ranks = TwoRanks(monkeypatch)
    keeper = ranks.keeper = StreamMemoryKeeper(
        SaveSchedule(save_interval_updates=4, max_update=11, patience=patience))
    training = Training(keeper, epoch_steps=8)
    for update in range(1, 12):
        training.segment_forward(update - 1)
        keeper.after_update(update)
        keeper.before_validation()
        if update in (4, 11):
            assert torch.equal(keeper.memory_for_checkpoint("train")[0], training.live_rows())
    if patience > 0:
        assert ranks.gathers == [u for u in range(1, 12) if u != 8]
    else:
        assert ranks.gathers == [4, 11]


def test_a_save_repeated_after_an_overflow_has_the_memory_of_the_overflowed_segment(monkeypatch, caplog):
    """fp16: update 5 overflows (no optimizer step), fairseq saves again at update 4 although the
    streams moved on by a segment; then update 5 succeeds. The repeated checkpoint must hold the
    memory after that segment."""
    ranks = TwoRanks(monkeypatch)
    for loss_scaling in (True, False):
        ranks.gathers.clear()
        keeper = ranks.keeper = StreamMemoryKeeper(SaveSchedule(save_interval_updates=4),
                                                   loss_scaling=loss_scaling)
        training = Training(keeper, epoch_steps=100)
        for update in range(1, 5):
            training.segment_forward(update - 1)
            keeper.after_update(update)
        assert torch.equal(keeper.memory_for_checkpoint("train")[0], training.live_rows())
        training.segment_forward(4)  # overflows: no after_update(5), then the save at 4 again
        with caplog.at_level(logging.WARNING):
            repeated = keeper.memory_for_checkpoint("train")
        expected = training.live_rows()  # after the overflowed segment
        training.segment_forward(4)  # update 5 again, which succeeds
        keeper.after_update(5)
        training.segment_forward(5)
        keeper.after_update(6)
        if loss_scaling:
            assert torch.equal(repeated[0], expected)
            assert ranks.gathers == [4, 4, 4]
        else:  # without loss scaling no update overflows, and nothing is gathered in advance
            assert repeated is None and "was not gathered" in caplog.text
            assert ranks.gathers == [4]
