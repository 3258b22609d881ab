"""--tensorboard-logdir with truncated_bptt_lm (the real fairseq-train), read back from the event
files; examples/plot_training_curves.py on that directory."""
import os
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from examples.fairseq_logs import parse_training_log
from fairseq_commands import ROOT, USER_DIR, preprocess, run, write_lines

# One worker builds the module's corpus and model once (scripts/test.sh: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("tensorboard_run")

WORDS = "the cat sat on a mat and the dog lay by a log".split()


def _lines(n, seed):
    return [" ".join(WORDS[(seed + 3 * i + j) % len(WORDS)] for j in range(4 + i % 5)) for i in range(n)]


def _scalars(event_dir):
    events = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tensorboard")
    for split, n, seed in (("train", 60, 0), ("valid", 12, 1), ("test", 12, 7)):
        write_lines(str(root / "text" / f"{split}.txt"), _lines(n, seed))
    preprocess(str(root / "text"), str(root / "data-bin"))
    log = run("fairseq-train", root / "data-bin", "--user-dir", USER_DIR, "--task",
              "truncated_bptt_lm", "--tokens-per-sample", 8, "--batch-size", 2,
              "--arch", "transformer_xl", "--n-layer", 1, "--d-model", 16, "--n-head", 2,
              "--d-head", 8, "--d-inner", 32, "--mem-len", 8, "--cutoffs", "1000",
              "--optimizer", "adam", "--lr", 0.003, "--max-update", 6, "--cpu",
              "--valid-subset", "valid,test", "--validate-interval-updates", 3,
              "--log-format", "json", "--log-interval", 1, "--save-dir", root / "ckpt",
              "--no-epoch-checkpoints", "--tensorboard-logdir", root / "tb")
    assert "tensorboard not found" not in log
    return root, log


def test_event_files_hold_the_logged_training_and_per_split_validation_metrics(trained):
    root, log = trained
    assert sorted(os.listdir(root / "tb")) == ["test", "train", "train_inner", "valid"]
    inner = _scalars(root / "tb" / "train_inner")
    records = parse_training_log(log)
    train = records["train"]
    assert [int(r["num_updates"]) for r in train] == sorted(inner["loss"]) == [1, 2, 3, 4, 5, 6]
    for r in train:
        step = int(r["num_updates"])
        for key in ("loss", "ppl", "lr", "gnorm"):
            assert inner[key][step] == pytest.approx(r[key], abs=1e-6)
    for subset in ("valid", "test"):  # each validation split under its own name, at its updates
        scalars = _scalars(root / "tb" / subset)
        logged = [r for r in records["valid"] if r["subset"] == subset]
        assert [int(r["num_updates"]) for r in logged] == sorted(scalars["loss"]) == [3, 6]
        for r in logged:
            step = int(r["num_updates"])
            assert scalars["loss"][step] == pytest.approx(r["loss"], abs=1e-6)
            assert scalars["ppl"][step] == pytest.approx(r["ppl"], abs=1e-6)
    valid, test = _scalars(root / "tb" / "valid"), _scalars(root / "tb" / "test")
    assert valid["loss"] != test["loss"]  # two splits, two memories, two results


def test_plot_training_curves_reads_the_tensorboard_directory(trained):
    root, _ = trained
    out = run(sys.executable, "-m", "examples.plot_training_curves",  # as docs/data.md shows
              root / "tb", "--labels", "run", "--out", root / "curves.png", cwd=ROOT)
    assert "run: 6 training points; validation: valid 2, test 2" in out, out[-2000:]
    with open(root / "curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
