"""StreamMemoryKeeper with a stand-in decoder that implements the model's stream-memory API."""
import logging

import torch
from torch import nn

from truncated_bptt.memory import XLMemory
from truncated_bptt.stream_memory import StreamMemoryKeeper, gather_rows


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
    keeper.after_train_forward()
    saved = keeper.memory_for_checkpoint("train")
    assert torch.equal(saved[0], torch.full((2, 3, 4), 5.0))
    saved[0].zero_()  # a copy: saving never aliases the live memory
    assert model.decoder.memory["train"].hiddens[0].eq(5).all()
    assert keeper.memory_for_checkpoint("valid") is None


def test_gather_rows_single_process_is_a_cpu_copy():
    t = torch.randn(2, 3, 4, 5)
    out = gather_rows(t, None, 1)
    assert torch.equal(out, t) and out.data_ptr() != t.data_ptr()


def test_the_task_runs_fairseqs_stand_in_batches_without_memory():
    """A dummy batch (ignore_grad) must neither reset nor advance the training streams."""
    from truncated_bptt.truncated_bptt_lm_task import TruncatedBPTTLMTask

    seen = []

    class Criterion:
        def __call__(self, model, sample):
            seen.append(sample["net_input"]["memory_key"])
            return torch.zeros((), requires_grad=True) * 1.0, 1, {}

    class Optimizer:
        def backward(self, loss):
            loss.backward()

    task = TruncatedBPTTLMTask.__new__(TruncatedBPTTLMTask)
    task.memory_keeper = StreamMemoryKeeper()
    model = FakeModel()
    model.set_num_updates = lambda n: None
    task.train_step(sample("train", 0), model, Criterion(), Optimizer(), 0, ignore_grad=True)
    assert seen == [None] and task.memory_keeper.segments_seen == 0
    task.train_step(sample("train", 3), model, Criterion(), Optimizer(), 0)
    assert seen == [None, "train"] and task.memory_keeper.segments_seen == 1
