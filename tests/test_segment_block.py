"""Several consecutive segments in one forward (truncated_bptt/segment_block.py) give what scoring
them one after another gives: plans against a by-hand simulation of the memory, and the decoder's
block path against its own segment-by-segment path, with the path that ran counted."""
import pytest
import torch

from inference_models import small_decoder, tokens
from truncated_bptt import relative_attention, segment_block, transformer_xl_layer
from truncated_bptt.memory import XLMemory
from truncated_bptt.segment_block import SegmentGroup, plan_segments


def segments_one_by_one(memory_len, block_len, segment_length, mem_len):
    """(query start, qlen, mlen, key start) of each segment, by following the memory's length."""
    out, start, memory = [], 0, memory_len
    while start < block_len:
        qlen = min(segment_length, block_len - start)
        out.append((start, qlen, memory, memory_len + start - memory))
        memory = min(mem_len, memory + qlen)
        start += qlen
    return out


@pytest.mark.parametrize("memory_len,block_len,segment_length,mem_len", [
    (0, 40, 4, 10), (10, 40, 4, 10), (10, 38, 4, 10), (3, 9, 4, 10), (0, 7, 8, 10), (20, 12, 4, 10),
    (0, 64, 8, 8),
])
def test_plan_matches_the_memory_of_one_segment_after_another(memory_len, block_len, segment_length,
                                                                 mem_len):
    groups = plan_segments(memory_len, block_len, segment_length, mem_len)
    flat = [(g.query_start + j * g.qlen, g.qlen, g.mlen, g.key_start + j * g.qlen)
            for g in groups for j in range(g.count)]
    assert flat == segments_one_by_one(memory_len, block_len, segment_length, mem_len)
    assert all(a.query_end == b.query_start for a, b in zip(groups, groups[1:]))
    assert all((a.qlen, a.mlen) != (b.qlen, b.mlen) for a, b in zip(groups, groups[1:]))


def test_plan_refuses_empty_lengths():
    with pytest.raises(ValueError, match="positive lengths"):
        plan_segments(0, 8, 0, 4)


def test_group_windows_are_the_keys_each_segment_sees():
    keys_values = torch.arange(2 * 14 * 3, dtype=torch.float32).view(2, 14, 3)
    group = SegmentGroup(query_start=2, count=3, qlen=2, mlen=4, key_start=0)
    windows = group.windows(keys_values)
    assert windows.shape == (2 * 3, 6, 3)
    for b in range(2):
        for j in range(3):
            assert torch.equal(windows[b * 3 + j], keys_values[b, 2 * j:2 * j + 6])
    queries = group.queries(keys_values[:, 4:])
    assert torch.equal(queries[1], keys_values[0, 8:10])  # block rows 4..5: positions 8..9


def count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *args, **kw: calls.append(1) or original(*args, **kw))
    return calls


def score_pass(decoder, stream, step_tokens, segment_length, key):
    """Features of a whole inference pass over ``stream`` ``[B, N]``, ``step_tokens`` per call."""
    features = []
    for step, start in enumerate(range(0, stream.size(1), step_tokens)):
        part = stream[:, start:start + step_tokens]
        h, _ = decoder(part, memory_key=key, segment_index=step, segment_length=segment_length)
        features.append(h)
    return torch.cat(features, dim=1)


OPTIONS = [
    dict(mem_len=10, same_length=True, clamp_len=6),
    dict(mem_len=12, same_length=True, same_length_mask="nvidia"),
    dict(mem_len=9),
    dict(mem_len=10, zero_initial_memory=True),
    dict(mem_len=8, pre_lnorm=True, tie_r=True),
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("attention,kernel", [
    ("auto", (segment_block, "indexed_window_attention")),
    ("reference", (relative_attention, "relative_attention")),
    ("sdpa", (relative_attention, "fused_relative_attention")),
])
@pytest.mark.parametrize("streams", [1, 3])
def test_blocks_of_segments_score_as_one_segment_after_another(options, attention, kernel, streams,
                                                               monkeypatch):
    """Steps of 5 segments of 4 tokens (the last step shorter, ending in a 2-token segment) give
    the features and memory of 4-token steps, through the block path and the expected kernel."""
    decoder = small_decoder(attention=attention, **options).eval()
    stream = tokens(streams, 46)
    with torch.no_grad():
        want = score_pass(decoder, stream, 4, 4, "one")
        blocks = count_calls(monkeypatch, transformer_xl_layer, "block_attention")
        kernel_calls = count_calls(monkeypatch, *kernel)
        got = score_pass(decoder, stream, 20, 4, "block")
    steps, n_layer = 3, len(decoder.layers)
    assert len(blocks) == steps * n_layer
    assert len(kernel_calls) >= steps * n_layer
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(decoder.get_stream_memory("block").hiddens,
                            decoder.get_stream_memory("one").hiddens):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_bf16_blocks_stay_close_to_one_segment_after_another():
    decoder = small_decoder(mem_len=10, same_length=True).eval().to(torch.bfloat16)
    stream = tokens(2, 40)
    with torch.no_grad():
        want = score_pass(decoder, stream, 4, 4, "one").float()
        got = score_pass(decoder, stream, 16, 4, "block").float()
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)


def test_a_block_continues_a_memory_longer_than_mem_len():
    """A memory set from outside may hold more than mem_len positions: segment 0 sees all of it,
    as it does one segment at a time."""
    decoder = small_decoder(mem_len=6).eval()
    memory = XLMemory([torch.randn(1, 9, 16) for _ in decoder.layers])
    stream = tokens(1, 12)
    with torch.no_grad():
        results = []
        for key, step_tokens in (("one", 4), ("block", 12)):
            decoder.set_stream_memory(key, memory)
            results.append(torch.cat([
                decoder(stream[:, s:s + step_tokens], memory_key=key, segment_index=1 + s,
                        segment_length=4)[0]
                for s in range(0, 12, step_tokens)], dim=1))
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-5)


def test_training_and_compiled_layers_take_one_segment_at_a_time(monkeypatch):
    """With gradients (no inference cache) and with --compile's layer caller the block is split
    into segments: block_attention never runs, and the results equal the block path's."""
    decoder = small_decoder(mem_len=8).eval()
    stream = tokens(2, 24)
    with torch.no_grad():
        want = score_pass(decoder, stream, 24, 4, "block")
    blocks = count_calls(monkeypatch, transformer_xl_layer, "block_attention")
    grad_features = score_pass(decoder, stream, 24, 4, "with-grad")
    layer_calls = []

    def eager_caller(layer, *args):  # stands in for CompiledLayers (one segment per call)
        layer_calls.append(1)
        return layer(*args)

    decoder.compiled_layers = eager_caller
    with torch.no_grad():
        compiled_features = score_pass(decoder, stream, 24, 4, "compiled")
    assert blocks == []
    assert len(layer_calls) == 6 * len(decoder.layers)
    torch.testing.assert_close(grad_features.detach(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled_features, want, rtol=1e-5, atol=1e-5)
