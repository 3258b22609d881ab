"""XLMemory, MemoryOptions and the concatenating memory writer against plain tensor arithmetic."""
import pytest
import torch

from truncated_bptt.memory import ConcatenatingWriter, MemoryOptions, XLMemory


def memory(batch=3, length=4, d=2, n_layer=2, with_kv=False):
    hiddens = [torch.arange(batch * length * d, dtype=torch.float32).view(batch, length, d) + 100 * i
               for i in range(n_layer)]
    kv = [torch.randn(batch, length, 2, 1, d) for _ in range(n_layer)] if with_kv else None
    return XLMemory(hiddens, kv, pass_serial=7 if with_kv else None)


def test_select_rows_reorders_hidden_states_and_keys_values():
    mem = memory(with_kv=True)
    order = torch.tensor([2, 0, 0])
    picked = mem.select_rows(order)
    for a, b in zip(picked.hiddens + picked.keys_values, mem.hiddens + mem.keys_values):
        assert torch.equal(a, b[order])
    assert picked.pass_serial == 7 and picked.storage is None


def test_keys_values_are_only_those_of_their_pass():
    mem = memory(with_kv=True)
    assert mem.keys_values_of_pass(7) is mem.keys_values
    assert mem.keys_values_of_pass(8) is None
    assert memory().keys_values_of_pass(7) is None


def test_checkpoint_round_trip_shares_nothing_and_drops_caches():
    mem = memory(with_kv=True)
    saved = mem.to_checkpoint()
    saved[0].zero_()
    assert mem.hiddens[0].abs().sum() > 0  # a copy
    restored = XLMemory.from_checkpoint(mem.to_checkpoint())
    assert all(torch.equal(a, b) for a, b in zip(restored.hiddens, mem.hiddens))
    assert restored.keys_values is None and restored.pass_serial is None


def test_expand_rows_and_zeros():
    one = memory(batch=1)
    wide = one.expand_rows(4)
    assert wide.batch_size == 4 and torch.equal(wide.hiddens[1][3], one.hiddens[1][0])
    zeros = XLMemory.zeros(3, 2, 5, 4, like=torch.ones(1, dtype=torch.bfloat16))
    assert zeros.length == 5 and zeros.hiddens[2].dtype == torch.bfloat16
    assert zeros.hiddens[0].abs().sum() == 0


@pytest.mark.parametrize("old_length,new_length,mem_len", [
    (0, 3, 4), (4, 3, 4), (2, 3, 4), (4, 6, 4), (4, 2, 10),
])
def test_concatenating_writer_keeps_the_last_mem_len_positions(old_length, new_length, mem_len):
    old = memory(length=old_length) if old_length else None
    writer = ConcatenatingWriter(old)
    inputs = [torch.randn(3, new_length, 2, requires_grad=True) for _ in range(2)]
    for layer, h in enumerate(inputs):
        layer_memory, keys_values = writer.layer_input(layer, h)
        assert keys_values is None
        assert layer_memory is (None if old is None else old.hiddens[layer])
    new = writer.memory_after(mem_len)
    for layer, h in enumerate(inputs):
        everything = h if old is None else torch.cat([old.hiddens[layer], h], dim=1)
        expected = everything[:, -mem_len:]
        assert torch.equal(new.hiddens[layer], expected.detach())
        assert not new.hiddens[layer].requires_grad
    assert ConcatenatingWriter(old).memory_after(0) is None


def test_memory_options_refuse_bad_values_with_one_line():
    with pytest.raises(ValueError, match="mem_len must be >= 0"):
        MemoryOptions(mem_len=-1)
    with pytest.raises(ValueError, match="same_length needs mem_len > 0"):
        MemoryOptions(mem_len=0, same_length=True)
    with pytest.raises(ValueError, match="same_length_mask must be 'authors' or 'nvidia', got 1"):
        MemoryOptions(mem_len=4, same_length_mask=1)

    class Cfg:
        mem_len, clamp_len, same_length = 16, "400", False

    with pytest.raises(ValueError, match=r"clamp_len must be an integer, got '400'; e.g. "
                                         r"--model-overrides \"\{'clamp_len': 640\}\""):
        MemoryOptions.from_config(Cfg)
