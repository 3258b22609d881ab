"""--data-layout fairseq_example against fairseq's own examples/truncated_bptt code.

The example's task module ships inside fairseq's wheel on both stacks. It registers the names this
plugin registers, so it runs in a subprocess that never imports the plugin: its
``TruncatedBPTTDataset`` over a ``TokenBlockDataset`` and its ``_collate_fn`` give the reference
batches.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from fairseq_commands import cli_env
from truncated_bptt.example_layout import ExampleLayoutDataset

PAD, EOS = 1, 2

EXAMPLE_BATCHES = r"""
import importlib.util, json, os, sys, types
import fairseq, torch
from fairseq.data import TokenBlockDataset
path = os.path.join(os.path.dirname(fairseq.__file__), "examples", "truncated_bptt",
                    "truncated_bptt_lm_task.py")
spec = importlib.util.spec_from_file_location("example_task", path)
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)
pads = types.SimpleNamespace(source_dictionary=types.SimpleNamespace(pad=lambda: 1),
                             target_dictionary=types.SimpleNamespace(pad=lambda: 1))
out = []
for tokens, tps, bsz, shards in json.loads(sys.argv[1]):
    lines = [torch.tensor(tokens[i:i + 5]) for i in range(0, len(tokens), 5)]  # the split's lines
    blocks = TokenBlockDataset(lines, [len(x) for x in lines], block_size=tps, pad=None, eos=None,
                               break_mode="none")
    out.append([])
    for shard in range(shards):
        data = example.TruncatedBPTTDataset(blocks, bsz, shard, shards)
        batches = [example.TruncatedBPTTLMTask._collate_fn(pads, [data[i]]) for i in range(len(data))]
        out[-1].append([[b["net_input"]["src_tokens"].tolist(), b["target"].tolist()] for b in batches])
print(json.dumps(out))
"""


def example_batches(cases):
    """For each (tokens, tokens_per_sample, batch_size, num_shards): per shard, its batches as
    [src_tokens, target] lists."""
    proc = subprocess.run([sys.executable, "-c", EXAMPLE_BATCHES, json.dumps(cases)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
                          env=cli_env(PYTHONPATH=""), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# (tokens, tokens_per_sample, batch_size, num_shards): blocks dropped at the end, a short last
# block inside the streams, several data-parallel ranks
CASES = [(23, 4, 2, 1), (24, 4, 2, 1), (41, 3, 2, 2), (10, 5, 2, 1)]


def test_batches_are_the_examples_own():
    cases = [([4 + (7 * i) % 37 for i in range(n)], tps, bsz, shards)  # no pad among the tokens
             for n, tps, bsz, shards in CASES]
    for (tokens, tps, bsz, shards), want in zip(cases, example_batches(cases)):
        n = len(tokens)
        for shard in range(shards):
            data = ExampleLayoutDataset(torch.tensor(tokens), tps, bsz, shards, shard, pad=PAD,
                                        eos=EOS, memory_key="train")
            got = [data.collater([data[i]]) for i in range(len(data))]
            assert len(got) == len(want[shard]), (n, tps, bsz, shards)
            for i, (batch, (src, target)) in enumerate(zip(got, want[shard])):
                assert batch["net_input"]["src_tokens"].tolist() == src, (n, tps, shard, i)
                assert batch["target"].tolist() == target, (n, tps, shard, i)
                assert batch["net_input"]["segment_index"] == i
                # ntokens counts the scored targets (the example's counts every position)
                assert batch["ntokens"] == sum(t != PAD for row in target for t in row)


def test_too_few_blocks_for_the_streams_is_one_clear_line():
    with pytest.raises(ValueError, match="has 3 blocks of 4 tokens, fewer than its 4 streams"):
        ExampleLayoutDataset(torch.arange(4, 16), 4, 4, pad=PAD, eos=EOS, memory_key="train")


@pytest.mark.parametrize("layout", ["streams", "fairseq_example"])
def test_task_option_selects_the_layout(tmp_path, layout):
    from truncated_bptt.token_stream import TokenStream
    from truncated_bptt.truncated_bptt_lm_task import TruncatedBPTTLMConfig, TruncatedBPTTLMTask
    from inference_models import make_dictionary_dir

    from fairseq.data import Dictionary

    data = make_dictionary_dir(str(tmp_path))
    cfg = TruncatedBPTTLMConfig(data=data, tokens_per_sample=4, data_layout=layout)
    task = TruncatedBPTTLMTask(cfg, Dictionary.load(os.path.join(data, "dict.txt")))
    stream = TokenStream(torch.arange(4, 27), name="train")
    batches = list(task.get_batch_iterator(stream, max_sentences=2).next_epoch_itr(shuffle=False))
    scored = sum(int(b["target"].ne(PAD).sum()) for b in batches)
    # fairseq_example: 6 blocks, 3 per stream, 3 targets in each but the short last one's 2
    assert scored == (23 if layout == "streams" else 17)


@pytest.mark.parametrize("layout,segments", [("streams", 4), ("fairseq_example", 1)])
def test_eval_lm_steps_hold_several_segments_only_in_the_streams_layout(tmp_path, caplog, monkeypatch,
                                                                         layout, segments):
    """fairseq-eval-lm's automatic segments per step fill 16 positions here (2 streams x 2 tokens x
    4); the example's layout keeps one block per step, and the log says which."""
    import logging

    from truncated_bptt import truncated_bptt_lm_task
    from truncated_bptt.token_stream import TokenStream
    from truncated_bptt.truncated_bptt_lm_task import TruncatedBPTTLMConfig, TruncatedBPTTLMTask
    from inference_models import make_dictionary_dir

    from fairseq.data import Dictionary

    data = make_dictionary_dir(str(tmp_path))
    cfg = TruncatedBPTTLMConfig(data=data, tokens_per_sample=2, data_layout=layout)
    task = TruncatedBPTTLMTask(cfg, Dictionary.load(os.path.join(data, "dict.txt")))
    stream = TokenStream(torch.arange(4, 40), name="test")
    monkeypatch.setattr(truncated_bptt_lm_task, "EVAL_STEP_POSITIONS", 16)
    with caplog.at_level(logging.INFO, logger="truncated_bptt.truncated_bptt_lm_task"):
        batches = list(task.eval_lm_dataloader(stream, batch_size=2))
    assert f"segments of 2 tokens, {segments} per step" in caplog.text
    assert batches[0]["net_input"]["src_tokens"].shape == (2, 2 * segments)
    assert all(b["net_input"]["segment_length"] == 2 for b in batches)
