"""The plugin through fairseq's real command-line tools: preprocess, train, evaluate.

The cycle corpus (conftest.py) is learnable in a few dozen CPU updates, so the test can check that
training really learns (loss falls) and that fairseq-eval-lm scores exactly the test split's tokens.
"""
import math
import os

from examples.fairseq_logs import parse_eval_lm, parse_training_log
from fairseq_commands import ROOT, USER_DIR, run


def test_preprocess_train_eval(tmp_path, cycle_corpus, cycle_text):
    ckpt = tmp_path / "ckpt"
    data = cycle_corpus(str(tmp_path), {"train": (120, 0), "valid": (20, 3), "test": (20, 5)})
    test_lines = cycle_text(20, 5)

    # From the repository root, as the README shows: `--user-dir truncated_bptt`.
    log = run(
        "fairseq-train", data, "--user-dir", "truncated_bptt",
        "--task", "truncated_bptt_lm", "--tokens-per-sample", 16, "--batch-size", 4,
        "--arch", "transformer_xl_tiny", "--n-layer", 2, "--d-model", 32, "--n-head", 2,
        "--d-head", 16, "--d-inner", 64, "--mem-len", 16, "--cutoffs", "8",
        "--dropout", 0.0, "--optimizer", "adam", "--lr", 0.01, "--clip-norm", 0.25,
        "--max-update", 40, "--log-format", "json", "--log-interval", 1,
        "--save-dir", ckpt, "--no-epoch-checkpoints", "--seed", 1, "--cpu",
        cwd=ROOT,
    )
    losses = [r["loss"] for r in parse_training_log(log)["train"]]  # --log-interval 1: all
    assert len(losses) == 40, log[-3000:]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    assert os.path.exists(ckpt / "checkpoint_last.pt")
    assert "keep-freed-memory: freed CPU blocks below 1 GiB stay in the heap" in log  # CPU training

    out = run(
        "fairseq-eval-lm", data, "--user-dir", USER_DIR, "--path", ckpt / "checkpoint_last.pt",
        "--task", "truncated_bptt_lm", "--gen-subset", "test", "--batch-size", 1, "--required-batch-size-multiple", 1,
        "--tokens-per-sample", 8,
        "--model-overrides", '{"mem_len":32,"clamp_len":16,"same_length":True}', "--cpu",
        cwd=tmp_path,
    )
    assert "keep-freed-memory" not in out  # scoring leaves the allocator alone
    n_tokens = sum(len(line.split()) + 1 for line in test_lines)  # words + end-of-line symbol
    scored = parse_eval_lm(out)
    assert scored["tokens"] == n_tokens
    assert scored["ppl"] < 4.0, out[-2000:]  # the cycle is nearly deterministic given context


def test_eval_lm_without_the_streaming_task_is_refused(tmp_path, cycle_corpus):
    """fairseq-eval-lm takes its task from the command line (default `language_modeling`), under
    which a Transformer-XL would silently be scored without memory: it must stop and say why."""
    ckpt = tmp_path / "ckpt"
    data = cycle_corpus(str(tmp_path), {split: (12, 1) for split in ("train", "valid", "test")})
    log = run("fairseq-train", data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm",
              "--tokens-per-sample", 8, "--batch-size", 2, "--arch", "transformer_xl_tiny",
              "--n-layer", 1, "--d-model", 16, "--n-head", 2, "--d-head", 8, "--d-inner", 32,
              "--cutoffs", "8", "--optimizer", "adam", "--lr", 0.001, "--max-update", 1,
              "--save-dir", ckpt, "--no-epoch-checkpoints", "--disable-validation", "--cpu",
              "--release-freed-memory", cwd=tmp_path)
    assert "keep-freed-memory" not in log  # turned off: glibc's allocator as it is
    proc = run("fairseq-eval-lm", data, "--user-dir", USER_DIR, "--path",
               ckpt / "checkpoint_last.pt", "--batch-size", 1, "--cpu", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "add --task truncated_bptt_lm" in proc.stdout, proc.stdout[-3000:]
