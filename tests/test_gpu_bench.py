"""benchmarks/gpu.sh's pipeline in its CPU mode (--tiny): every stage runs and is reported, so the
script works the first time it meets a GPU."""
import json
import os
import subprocess
import sys

import pytest

from fairseq_commands import ROOT, cli_env

# Beside the --compile tests: their graphs are the ones the tiny compiled run needs (inductor cache).
pytestmark = pytest.mark.xdist_group("torch_compile")


def test_tiny_mode_runs_every_stage_and_writes_the_results(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_bench", "--tiny", "--out", str(tmp_path / "results"),
         "--work", str(tmp_path / "work")],
        cwd=ROOT, env=cli_env(OMP_NUM_THREADS=1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    (json_path,) = [p for p in (tmp_path / "results").iterdir() if p.suffix == ".json"]
    results = json.loads(json_path.read_text())
    training = {r["name"]: r for r in results["training"]}
    assert set(training) == {"train-tiny-fp32", "train-tiny-fp32-compile", "train-tiny-bf16"}
    assert all(r["tokens_per_s"] > 0 and r["peak_memory_gib"] > 0 for r in training.values())
    assert not training["train-tiny-fp32-compile"]["compile_failed"]
    inference = {r["name"]: r for r in results["inference"]}
    assert set(inference) == {"eval-lm-eager-fp32", "eval-lm-eager-bf16", "torchscript-float32"}
    # the TorchScript scorer scores the split as fairseq-eval-lm does
    assert abs(inference["torchscript-float32"]["loss"] - inference["eval-lm-eager-fp32"]["loss"]) < 1e-3
    assert results["scaling"] == []  # one device
    markdown = json_path.with_suffix(".md").read_text()
    assert "| base, batch 1, inference, TorchScript | 6,936 |" in markdown
    assert os.path.exists(os.path.join(ROOT, training["train-tiny-bf16"]["log"]))
