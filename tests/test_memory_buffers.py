"""MemoryBuffers: memory that grows in place in inference passes must give the same results as
memory rebuilt by concatenation (the training path), through compactions and branches."""
import torch

from inference_models import small_decoder, tokens
from truncated_bptt.inference_cache import InferenceCache
from truncated_bptt.memory_buffers import MemoryBuffers


def stream(decoder, segments, key, grad):
    """Features of each segment, streamed with memory under ``key``; with ``grad`` the decoder takes
    its training path (memory rebuilt by torch.cat every step, no cached keys/values)."""
    decoder.reset_stream_memory(key)
    outs = []
    with torch.set_grad_enabled(grad):
        for i, seg in enumerate(segments):
            out, _ = decoder(seg, memory_key=key, segment_index=i)
            outs.append(out.detach())
    return outs


def test_streaming_through_compactions_equals_concatenated_memory():
    dec = small_decoder(mem_len=12, same_length=True, clamp_len=9).eval()
    segments = tokens(3, 5 * 9).split(5, dim=1)  # capacity 12 + 12: a compaction every 2-3 steps
    reference = stream(dec, segments, "ref", grad=True)
    buffered = stream(dec, segments, "buf", grad=False)
    for ref, out in zip(reference, buffered):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    memory = dec.get_stream_memory("buf")
    assert isinstance(memory.storage, MemoryBuffers)
    assert memory.hiddens[0].shape == (3, 12, 16) and memory.keys_values[0].shape == (3, 12, 2, 2, 8)
    for mine, ref in zip(memory.hiddens, dec.get_stream_memory("ref").hiddens):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)


def test_an_older_memory_used_again_is_not_overwritten():
    dec = small_decoder(mem_len=10).eval()
    seg = tokens(2, 4 * 4).split(4, dim=1)
    cache = InferenceCache(epoch=dec._cache_epoch)
    with torch.no_grad():
        _, memory = dec.forward_segment(seg[0], None, cache)
        _, memory = dec.forward_segment(seg[1], memory, cache)
        older = [t.clone() for t in memory.hiddens + memory.keys_values]
        first, _ = dec.forward_segment(seg[2], memory, cache)
        second, branch = dec.forward_segment(seg[3], memory, cache)  # the same memory again
        again, _ = dec.forward_segment(seg[2], memory, cache)
    torch.testing.assert_close(again, first)
    for view, copy in zip(memory.hiddens + memory.keys_values, older):
        torch.testing.assert_close(view, copy)  # the views still hold their memory
    assert branch.storage is not memory.storage


def test_holds_only_the_views_ending_at_the_fill_level():
    mem = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    kv = -torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    buffers = MemoryBuffers([mem], [kv], capacity=8)
    assert buffers.holds([buffers.hidden_view(0, 3, 0)], [buffers.keys_values_view(0, 3, 0)])
    assert not buffers.holds([mem], [kv])  # copies elsewhere
    view, kv_view = buffers.hidden_view(0, 3, 2), buffers.keys_values_view(0, 3, 2)
    view[:, 3:] = -1.0
    buffers.advance(2)
    assert buffers.holds([view[:, -4:]], [kv_view[:, -4:]])
    assert not buffers.holds([view[:, :4]], [kv_view[:, :4]])
    buffers.make_room(4, 4)  # 5 + 4 > 8: the last 4 positions move to fresh buffers
    assert buffers.end == 4 and buffers.holds([buffers.hidden_view(0, 4, 0)],
                                              [buffers.keys_values_view(0, 4, 0)])
    torch.testing.assert_close(buffers.hidden_view(0, 4, 0), view[:, -4:])
