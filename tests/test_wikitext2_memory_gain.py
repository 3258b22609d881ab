"""examples/wikitext2/run.sh (memory_gain.py): its verdicts from given perplexities, and one real
run end to end on a small corpus with a shrunk model (fairseq-preprocess, two fairseq-hydra-train
runs side by side, fairseq-eval-lm at each memory length and as trained, the results files)."""
import json
import os
import shutil
import sys

import pytest

from examples.wikitext2 import memory_gain
from fairseq_commands import ROOT, cli_env, run, write_lines


def trained(name, sweep, as_trained, mem_len):
    run_ = memory_gain.Run(name, name, "unused", train_tokens_per_sample=128, train_mem_len=mem_len)
    run_.sweep, run_.as_trained = dict(sweep), as_trained
    return run_


def test_verdicts_answer_from_the_numbers():
    memory = trained("memory", {0: 168.38, 32: 154.20, 128: 151.09}, 150.88, 128)
    no_memory = trained("no_memory", {0: 161.91, 32: 154.88, 128: 153.41}, 157.66, 0)
    falls, better, equal = memory_gain.verdicts(memory, no_memory, [0, 32, 128])
    assert "falls at every step" in falls and "-10.3 %" in falls
    assert "(best: mem_len 128, 151.09)" in better and "153.41" in better
    assert better.endswith("the model trained with memory is better")
    assert "better at mem_len 32, 128 of 0, 32, 128" in equal
    # the other way round: memory that does not help is reported as such
    flat = trained("memory", {0: 160.0, 32: 161.0, 128: 162.0}, 162.0, 128)
    falls, better, _ = memory_gain.verdicts(flat, no_memory, [0, 32, 128])
    assert "does NOT fall at every step" in falls
    assert better.endswith("the model trained with memory is NOT better")


def test_the_evaluations_cover_every_memory_length_and_each_model_as_trained():
    memory = trained("memory", {}, None, 128)
    no_memory = trained("no_memory", {}, None, 0)
    plan = memory_gain.evaluations([memory, no_memory], [0, 32])
    assert [(e.run.name, e.mem_len, e.tokens_per_sample, e.as_trained) for e in plan] == [
        ("memory", 0, 64, False), ("memory", 32, 64, False),
        ("no_memory", 0, 64, False), ("no_memory", 32, 64, False),
        ("memory", 128, 128, True), ("no_memory", 0, 128, True)]
    assert {e.clamp_len for e in plan if not e.as_trained} == {256}  # 128 tokens + 128 of memory


@pytest.mark.parametrize("args", [["--mem-lens", "8", "16"]])
def test_bad_arguments_fail_with_one_line(args, capsys):
    with pytest.raises(SystemExit):
        memory_gain.parse_args(["--text-dir", "x", *args])
    assert "--mem-lens must include 0" in capsys.readouterr().err


def test_run_sh_end_to_end_on_a_small_corpus(tmp_path):
    text = tmp_path / "text"
    words = [f"w{i}" for i in range(30)]
    for split, n in (("train", 300), ("valid", 30), ("test", 30)):
        write_lines(str(text / f"{split}.txt"),
                    [" ".join(words[(7 * i + j) % 30] for j in range(4 + i % 5)) for i in range(n)])
    shrink = ["model.n_layer=1", "model.d_model=16", "model.n_head=2", "model.d_head=8",
              "model.d_inner=32", "model.mem_len=16", "task.tokens_per_sample=16",
              "dataset.batch_size=2", "optimization.max_update=6", "lr_scheduler.warmup_updates=2",
              "dataset.validate_interval_updates=3", "checkpoint.save_interval_updates=3",
              "common.log_interval=3"]
    results = tmp_path / "results" / "wt2"
    out = run(shutil.which("bash"), os.path.join(ROOT, "examples", "wikitext2", "run.sh"), text,
              "--out-dir", tmp_path / "runs", "--results", results, "--mem-lens", "0", "8",
              "--corpus-name", "tiny", "--", *shrink,
              env=cli_env(PYTHON=sys.executable), timeout=900)
    with open(f"{results}.json") as f:
        summary = json.load(f)
    memory, no_memory = summary["runs"]
    assert (memory["train_mem_len"], no_memory["train_mem_len"]) == (16, 0)
    assert memory["updates"] == no_memory["updates"] == 6
    assert sorted(memory["sweep"]) == sorted(no_memory["sweep"]) == ["0", "8"]
    assert memory["tokens"] == no_memory["tokens"] > 0 and memory["as_trained"] > 0
    with open(f"{results}.md") as f:
        md = f.read()
    assert "| trained with mem_len 16 |" in md and "| trained with mem_len 0 |" in md
    assert summary["verdicts"][0] in md and summary["verdicts"][0] in out
    with open(f"{results}.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
