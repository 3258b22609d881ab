"""StreamDataset against a deliberately naive reference: Python lists cut by hand."""
import itertools

import pytest
import torch

from truncated_bptt.stream_dataset import StreamDataset

PAD, EOS = 1, 2


def naive_streams(tokens, num_streams):
    """Contiguous streams whose lengths differ by at most one, longer ones first."""
    n = len(tokens)
    streams, start = [], 0
    for s in range(num_streams):
        length = n // num_streams + (1 if s < n % num_streams else 0)
        streams.append(list(range(start, start + length)))  # positions in the split
        start += length
    assert start == n
    return streams


def naive_batches(tokens, tps, batch_size, num_shards, shard_id):
    """[(src rows, target rows)] per step, by walking each stream position by position."""
    streams = naive_streams(tokens, batch_size * num_shards)
    steps = -(-max(len(s) for s in streams) // tps)
    mine = streams[shard_id * batch_size:(shard_id + 1) * batch_size]
    out = []
    for step in range(steps):
        length = min(tps, max(len(s) for s in streams) - step * tps)
        src, tgt = [], []
        for stream in mine:
            src_row, tgt_row = [], []
            for j in range(length):
                k = step * tps + j
                if k < len(stream):
                    g = stream[k]
                    tgt_row.append(tokens[g])
                    src_row.append(tokens[g - 1] if g > 0 else EOS)
                else:
                    tgt_row.append(PAD)
                    src_row.append(PAD)
            src.append(src_row)
            tgt.append(tgt_row)
        out.append((src, tgt))
    return out


@pytest.mark.parametrize(
    "n,tps,batch_size,num_shards",
    [(229, 8, 2, 2), (40, 5, 4, 1), (41, 5, 2, 2), (9, 4, 1, 2), (7, 100, 3, 2), (6, 1, 3, 2)],
)
def test_batches_match_naive_reference(n, tps, batch_size, num_shards):
    tokens = torch.arange(10, 10 + n)  # token value = position + 10: order is visible
    for shard_id in range(num_shards):
        ds = StreamDataset(tokens, tps, batch_size, num_shards, shard_id, pad=PAD, eos=EOS,
                           memory_key="valid")
        expected = naive_batches(tokens.tolist(), tps, batch_size, num_shards, shard_id)
        assert len(ds) == len(expected)
        for step, (src, tgt) in enumerate(expected):
            batch = ds.collater([ds[step]])
            assert batch["net_input"]["src_tokens"].tolist() == src
            assert batch["target"].tolist() == tgt
            assert batch["ntokens"] == sum(t != PAD for row in tgt for t in row)
            assert batch["net_input"]["src_lengths"].tolist() == [
                sum(t != PAD for t in row) for row in tgt
            ]
            assert batch["net_input"]["segment_index"] == step
            assert batch["net_input"]["memory_key"] == "valid"
            assert batch["nsentences"] == batch_size
            streams = [shard_id * batch_size + b for b in range(batch_size)]
            assert batch["id"].tolist() == [step * batch_size * num_shards + s for s in streams]


@pytest.mark.parametrize("n,tps,batch_size,num_shards", [(229, 8, 2, 2), (101, 7, 3, 3)])
def test_every_token_is_a_target_once_and_inputs_are_the_preceding_tokens(
    n, tps, batch_size, num_shards
):
    tokens = torch.arange(10, 10 + n)
    targets = []
    lengths = set()
    for shard_id in range(num_shards):
        ds = StreamDataset(tokens, tps, batch_size, num_shards, shard_id, pad=PAD, eos=EOS,
                           memory_key="train")
        lengths.add(len(ds))
        per_row = [[] for _ in range(batch_size)]
        for step in range(len(ds)):
            batch = ds[step]
            src, tgt = batch["net_input"]["src_tokens"], batch["target"]
            real = tgt.ne(PAD)
            # pads only at the end of a stream: once a row pads, it pads to the end of the pass
            assert torch.equal(real, real.cummin(dim=1).values)
            # each input is the token just before its target in the split
            prev = torch.where(tgt == 10, torch.full_like(tgt, EOS), tgt - 1)
            assert torch.equal(src[real], prev[real])
            assert src[~real].eq(PAD).all()
            for b in range(batch_size):
                per_row[b] += tgt[b][real[b]].tolist()
        for row in per_row:  # each stream is contiguous
            assert row == list(range(row[0], row[0] + len(row)))
        targets += list(itertools.chain(*per_row))
    assert sorted(targets) == tokens.tolist() and len(targets) == n
    assert len(lengths) == 1, "all ranks must have the same number of steps"


@pytest.mark.parametrize("n,tps,batch_size,segments", [(229, 8, 2, 3), (41, 5, 2, 16), (7, 2, 1, 2)])
def test_steps_of_several_segments_are_consecutive_steps_joined(n, tps, batch_size, segments):
    """A step of k segments is the k one-segment steps it replaces, side by side, and says T."""
    tokens = torch.arange(10, 10 + n)
    one = StreamDataset(tokens, tps, batch_size, pad=PAD, eos=EOS, memory_key="test")
    several = StreamDataset(tokens, tps, batch_size, pad=PAD, eos=EOS, memory_key="test",
                            segments_per_step=segments)
    assert len(several) == -(-len(one) // segments)
    for step in range(len(several)):
        batch = several[step]
        parts = [one[i] for i in range(step * segments, min((step + 1) * segments, len(one)))]
        for key in ("src_tokens", "src_lengths"):
            joined = [p["net_input"][key] for p in parts]
            joined = torch.cat(joined, dim=1) if key == "src_tokens" else sum(joined)
            assert torch.equal(batch["net_input"][key], joined)
        assert torch.equal(batch["target"], torch.cat([p["target"] for p in parts], dim=1))
        assert batch["ntokens"] == sum(p["ntokens"] for p in parts)
        assert batch["net_input"]["segment_length"] == tps
        assert batch["net_input"]["segment_index"] == step
    with pytest.raises(ValueError, match="segments_per_step must be positive"):
        StreamDataset(tokens, tps, batch_size, pad=PAD, eos=EOS, memory_key="test",
                      segments_per_step=0)


def test_w2_b2_rows_are_w1_b4_rows():
    tokens = torch.arange(10, 90)
    whole = StreamDataset(tokens, 6, 4, 1, 0, pad=PAD, eos=EOS, memory_key="train")
    halves = [StreamDataset(tokens, 6, 2, 2, r, pad=PAD, eos=EOS, memory_key="train")
              for r in range(2)]
    for step in range(len(whole)):
        joined = torch.cat([h[step]["target"] for h in halves])
        assert torch.equal(joined, whole[step]["target"])


def test_bad_layouts_are_refused():
    tokens = torch.arange(10, 15)
    with pytest.raises(ValueError, match="5 tokens cannot fill 6 streams"):
        StreamDataset(tokens, 4, 3, 2, 0, pad=PAD, eos=EOS, memory_key="train")
    with pytest.raises(ValueError, match="tokens_per_sample must be positive"):
        StreamDataset(tokens, 0, 1, 1, 0, pad=PAD, eos=EOS, memory_key="train")
    with pytest.raises(IndexError):
        StreamDataset(tokens, 4, 1, 1, 0, pad=PAD, eos=EOS, memory_key="train")[2]
