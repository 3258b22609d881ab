"""fairseq-eval-lm scoring with truncated_bptt_lm: one stream or several (batch > 1), fp32 and bf16,
equal to the model streaming the same segments in-process."""
import copy
import math

import pytest
import torch

from examples.fairseq_logs import parse_eval_lm
from fairseq_commands import USER_DIR, run
from inference_models import binarize, tiny_model
from truncated_bptt.fairseq_checkpoint import build_model, save_checkpoint

# 6 lines x (7 words + eos) = 48 tokens: 1, 2 or 3 streams of equal length, 8-token segments.
LINES = [" ".join(f"w{(7 * i + 3 * j) % 40}" for j in range(7)) for i in range(6)]
T = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory, dictionary_dir):
    root = tmp_path_factory.mktemp("scoring")
    data = binarize(dictionary_dir, str(root / "data"), "test", LINES)
    ckpt = str(root / "model.pt")
    model, task, cfg = tiny_model(data, "--mem-len", "12", "--tokens-per-sample", str(T))
    with torch.no_grad():  # sharp random weights, so precision and context visibly matter
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    save_checkpoint(model, cfg, ckpt)
    return data, ckpt, model, task


def split_tokens(task):
    d = task.dictionary
    return torch.cat([d.encode_line(line, add_if_not_exist=False).long() for line in LINES])


def streamed_loss(model, task, streams, dtype):
    """Base-2 loss of the split cut into ``streams`` equal streams, each read in T-token segments
    over the model's memory (what fairseq-eval-lm does), computed in-process in ``dtype``."""
    tokens = split_tokens(task)
    inputs = torch.cat([tokens.new_tensor([task.dictionary.eos()]), tokens[:-1]])
    length = tokens.numel() // streams
    model = copy.deepcopy(model).to(dtype)  # a cast back to fp32 would keep bf16-rounded weights
    total = 0.0
    with torch.no_grad():
        for k, start in enumerate(range(0, length, T)):
            rows = [slice(s * length + start, s * length + start + T) for s in range(streams)]
            src = torch.stack([inputs[r] for r in rows])
            tgt = torch.stack([tokens[r] for r in rows])
            features, _ = model(src, memory_key="test", segment_index=k)
            total -= model.decoder.target_log_probs(features, tgt).sum().item()
    return total / tokens.numel() / math.log(2)


def eval_lm(data, ckpt, *args):
    log = run("fairseq-eval-lm", data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm",
              "--path", ckpt, "--gen-subset", "test", "--tokens-per-sample", str(T), "--cpu", *args)
    return parse_eval_lm(log)["loss"]


def test_bf16_option_casts_the_model_the_task_builds(setup):
    data = setup[0]
    model, _, _ = build_model(data, ["--n-layer", "1", "--d-model", "16", "--n-head", "2", "--d-head",
                                     "8", "--d-inner", "32", "--cutoffs", "20,30", "--bf16"])
    assert next(model.parameters()).dtype == torch.bfloat16


def test_eval_lm_one_stream_fp32_and_three_streams_bf16(setup):
    data, ckpt, model, task = setup
    one = streamed_loss(model, task, 1, torch.float32)
    three = streamed_loss(model, task, 3, torch.float32)
    three_bf16 = streamed_loss(model, task, 3, torch.bfloat16)
    assert abs(one - three) > 5e-4  # streams see different contexts: a real difference
    assert abs(three - three_bf16) > 1e-3  # bf16 is visibly not fp32 ...
    assert abs(three - three_bf16) < 0.05 * three  # ... but close
    assert eval_lm(data, ckpt, "--batch-size", "1") == pytest.approx(one, abs=2e-4)
    assert eval_lm(data, ckpt, "--batch-size", "3", "--bf16") == pytest.approx(three_bf16, abs=2e-4)


def test_eval_lm_scores_steps_of_several_segments_as_one_segment_per_step(setup):
    """fairseq-eval-lm's automatic steps fill 512 positions: 32 segments of 8 tokens at 2 streams
    (the log says so); that, 1 and 4 segments per step all give the in-process segment-by-segment
    loss. A bad value stops with one line."""
    data, ckpt, model, task = setup
    one = streamed_loss(model, task, 2, torch.float32)
    log = run("fairseq-eval-lm", data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm",
              "--path", ckpt, "--gen-subset", "test", "--tokens-per-sample", str(T), "--cpu",
              "--batch-size", "2")
    assert f"segments of {T} tokens, 32 per step" in log
    assert parse_eval_lm(log)["loss"] == pytest.approx(one, abs=2e-4)
    for segments in ("1", "4"):
        loss = eval_lm(data, ckpt, "--batch-size", "2", "--eval-segments-per-step", segments)
        assert loss == pytest.approx(one, abs=2e-4)
    bad = run("fairseq-eval-lm", data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm",
              "--path", ckpt, "--gen-subset", "test", "--cpu", "--eval-segments-per-step", "-1",
              check=False)
    assert bad.returncode != 0
    assert "--eval-segments-per-step must be 0 (auto) or a positive integer, got -1" in bad.stdout
