"""MemoryBuffers: evaluation/generation memory that grows in place must give the same results as
memory rebuilt by concatenation (the training path), through compactions and branches."""
import torch

from truncated_bptt.memory_buffers import MemoryBuffers
from test_transformer_xl_model import small_decoder, tokens


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
    state = dec._saved_memory(dec._stream_states["buf"])
    assert isinstance(state["buffers"], MemoryBuffers)
    assert state["layer_0"].shape == (3, 12, 16) and state["kv_0"].shape == (3, 12, 2, 2, 8)
    ref_memory = dec.get_stream_memory("ref")
    for mine, ref in zip(dec.get_stream_memory("buf"), ref_memory):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)


def test_an_older_state_used_again_is_not_overwritten():
    dec = small_decoder(mem_len=10).eval()
    seg = tokens(2, 4 * 4).split(4, dim=1)
    with torch.no_grad():
        _, state = dec._run(seg[0], None)
        _, state = dec._run(seg[1], state)  # buffers from here on
        older = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in state.items()}
        first, _ = dec._run(seg[2], state)
        second, branch = dec._run(seg[3], state)  # the same state again: a branch
        again, _ = dec._run(seg[2], state)
    torch.testing.assert_close(again, first)
    for name in ("layer_0", "kv_1"):
        torch.testing.assert_close(state[name], older[name])  # the views still hold their memory
    assert branch["buffers"] is not state["buffers"]


def test_holds_only_the_views_ending_at_the_fill_level():
    mem = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    buffers = MemoryBuffers({"m": mem}, capacity=8)
    assert buffers.holds({"m": buffers.extended("m", 3, 0)})
    assert not buffers.holds({"m": mem})  # a copy elsewhere
    view = buffers.extended("m", 3, 2)
    view[:, 3:] = -1.0
    buffers.advance(2)
    assert buffers.holds({"m": view[:, -4:]}) and not buffers.holds({"m": view[:, :4]})
    buffers.make_room(4, 4)  # 5 + 4 > 8: the last 4 positions move to fresh buffers
    assert buffers.end == 4 and buffers.holds({"m": buffers.extended("m", 4, 0)})
    torch.testing.assert_close(buffers.extended("m", 4, 0), view[:, -4:])
