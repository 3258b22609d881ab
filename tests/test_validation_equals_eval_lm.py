"""The validation loss fairseq-train logs is the loss fairseq-eval-lm gives the checkpoint saved at
the same update (same split, streams and segment length), at every validation of a run.

This is the regression test of stale inference caches: fairseq's optimizers write the weights
through ``p.data`` (no version counter moves), so a cache keyed on tensor metadata would score the
second validation with position keys of the first one's weights.
"""
import os
import random

import pytest

from examples.fairseq_logs import by_update, parse_eval_lm, parse_training_log
from fairseq_commands import ROOT, USER_DIR, preprocess, run, write_lines

TOKENS_PER_SAMPLE, STREAMS = 32, 4
MODEL = ["--arch", "transformer_xl", "--n-layer", "2", "--d-model", "64", "--n-head", "2",
         "--d-head", "32", "--d-inner", "128", "--cutoffs", "100,200", "--mem-len", "32",
         "--clamp-len", "24", "--dropout", "0.0"]
COMMON = ["--user-dir", USER_DIR, "--task", "truncated_bptt_lm", "--tokens-per-sample",
          str(TOKENS_PER_SAMPLE), "--batch-size", str(STREAMS), "--cpu", "--num-workers", "0"]
RELATIVE_TOLERANCE = 2e-4


def markov_lines(n_tokens, seed, vocabulary=300):
    """Text from a fixed random bigram chain: learnable, so the weights change a lot per update."""
    chain = random.Random(0)
    successors = {w: [chain.randrange(vocabulary) for _ in range(3)] for w in range(vocabulary)}
    rng, word, lines, line = random.Random(seed), 0, [], []
    for _ in range(n_tokens):
        word = rng.choice(successors[word]) if rng.random() < 0.9 else rng.randrange(vocabulary)
        line.append(f"w{word}")
        if len(line) == 12:
            lines.append(" ".join(line))
            line = []
    return lines


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two data directories: validation of one segment per stream, and of many."""
    root = tmp_path_factory.mktemp("valid_vs_eval")
    out = {}
    for name, valid_tokens in (("one_segment", 110), ("many_segments", 700)):
        text = root / name / "text"
        write_lines(str(text / "train.txt"), markov_lines(12_000, seed=1))
        write_lines(str(text / "valid.txt"), markov_lines(valid_tokens, seed=2))
        preprocess(str(text), str(root / name / "data"), splits=("train", "valid"))
        out[name] = str(root / name / "data")
    return out


def validations(log):
    """{num_updates: valid loss (base 2)} from fairseq-train's log."""
    return by_update(parse_training_log(log)["valid"])


def eval_lm_loss(data, checkpoint):
    out = run("fairseq-eval-lm", data, *COMMON, "--path", checkpoint, "--gen-subset", "valid")
    return parse_eval_lm(out)["loss"]


def assert_each_validation_equals_eval_lm(log, data, save_dir, updates=(30, 60)):
    logged = validations(log)
    assert sorted(logged) == list(updates), log[-3000:]
    assert logged[updates[0]] != logged[updates[1]]  # the weights really changed in between
    for update in updates:
        scored = eval_lm_loss(data, os.path.join(save_dir, f"checkpoint_1_{update}.pt"))
        # fairseq logs the validation loss to 3 decimals
        assert abs(logged[update] - scored) <= max(RELATIVE_TOLERANCE * scored, 5e-4), \
            (update, logged, scored)


TRAIN_ARGS = ["--max-update", "60", "--save-interval-updates", "30", "--log-format", "json",
              "--log-interval", "10", "--seed", "1"]


ADAM = ["--optimizer", "adam", "--lr", "0.01"]
LAMB = ["--optimizer", "nvidia_lamb", "--lr", "0.01"]


@pytest.mark.parametrize("valid,optimizer", [
    ("one_segment", ADAM), ("one_segment", LAMB), ("many_segments", ADAM),
], ids=["adam-one_segment", "nvidia_lamb-one_segment", "adam-many_segments"])
def test_fairseq_train_validation_equals_eval_lm_of_its_checkpoints(corpora, tmp_path, valid,
                                                                    optimizer):
    save_dir = str(tmp_path / "ckpt")
    log = run("fairseq-train", corpora[valid], *COMMON, *MODEL, *optimizer, *TRAIN_ARGS,
              "--save-dir", save_dir)
    assert_each_validation_equals_eval_lm(log, corpora[valid], save_dir)


def test_bf16_training_validation_equals_eval_lm(corpora, tmp_path):
    """fairseq's half-precision wrapper (fp32 master weights copied into the bf16 model with
    ``p.data.copy_``), through fairseq-hydra-train; eval-lm scores the bf16 checkpoint in bf16."""
    save_dir = str(tmp_path / "ckpt")
    data = corpora["one_segment"]
    overrides = [
        f"task.data={data}", f"checkpoint.save_dir={save_dir}", "common.bf16=true",
        "common.log_format=json", "common.log_interval=10", "common.log_file=null",
        f"task.tokens_per_sample={TOKENS_PER_SAMPLE}", f"dataset.batch_size={STREAMS}",
        "dataset.num_workers=0", "model.n_layer=2", "model.mem_len=32", "+model.clamp_len=24",
        "model.cutoffs=[100,200]", "optimization.max_update=60", "lr_scheduler.warmup_updates=5",
        "checkpoint.save_interval_updates=30", "checkpoint.no_epoch_checkpoints=false",
        f"common.user_dir={USER_DIR}",
    ]
    log = run("fairseq-hydra-train", "--config-dir", os.path.join(ROOT, "configs"),
              "--config-name", "tiny_cpu", *overrides, cwd=str(tmp_path))
    assert "bf16" in log or "bfloat16" in log or os.path.exists(save_dir)
    logged = validations(log)
    assert sorted(logged) == [30, 60], log[-3000:]
    for update in (30, 60):
        out = run("fairseq-eval-lm", data, *COMMON, "--path",
                  os.path.join(save_dir, f"checkpoint_1_{update}.pt"), "--gen-subset", "valid",
                  "--bf16")
        scored = parse_eval_lm(out)["loss"]
        assert abs(logged[update] - scored) <= max(RELATIVE_TOLERANCE * scored, 5e-4), \
            (update, logged, scored)
