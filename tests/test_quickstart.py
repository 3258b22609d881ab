"""The offline quickstart: its corpus, its pass/fail rule, and a real (reduced) run end to end."""
import os
import re
import subprocess
import sys

import pytest

from examples.fairseq_logs import by_update, parse_training_log
from examples.quickstart import make_corpus, quickstart
from fairseq_commands import ROOT, cli_env


def _documents(lines):
    doc = []
    for line in lines:
        if line == "":
            if doc:
                yield doc
            doc = []
        else:
            doc.append(line)


def test_corpus_is_deterministic():
    a = make_corpus.make_corpus(seed=3, train_tokens=3000, valid_tokens=500, test_tokens=500)
    b = make_corpus.make_corpus(seed=3, train_tokens=3000, valid_tokens=500, test_tokens=500)
    c = make_corpus.make_corpus(seed=4, train_tokens=3000, valid_tokens=500, test_tokens=500)
    assert a == b
    assert a["train"] != c["train"]


def test_corpus_repeats_topics_far_beyond_a_training_segment():
    corpus = make_corpus.make_corpus(seed=1, train_tokens=20000, valid_tokens=100, test_tokens=100)
    filler = set(make_corpus.VERBS + make_corpus.ADJECTIVES + make_corpus.NOUNS +
                 make_corpus.PREPOSITIONS + make_corpus.CONNECTIVES + ["the", "a", "and", "is", "."])
    segment = quickstart.TRAIN_TOKENS_PER_SAMPLE
    docs = list(_documents(corpus["train"]))
    assert len(docs) > 20
    titles = set()
    mentions = far_mentions = 0
    for doc in docs:
        title = doc[0].split()
        assert title[0] == "=" and title[-1] == "="
        topics = set(title[1:-1])
        titles.add(frozenset(topics))
        body = " ".join(doc[1:]).split()
        assert len(body) > segment
        # Every non-filler word of the body is one of the title's topics...
        assert {w for w in body if w not in filler} <= topics
        positions = [i for i, w in enumerate(body) if w in topics]
        mentions += len(positions)
        far_mentions += sum(i >= segment for i in positions)
    # ...and most mentions come more than one training segment after the title.
    assert far_mentions / mentions > 0.6
    # Topics differ between documents (only earlier text of the document tells which they are).
    assert len(titles) == len(docs)


def test_check_drop_threshold():
    assert quickstart.check_drop(30.0, 24.0) == (True, pytest.approx(0.2))
    ok, drop = quickstart.check_drop(30.0, 24.3)
    assert not ok and drop == pytest.approx(0.19)
    assert not quickstart.check_drop(30.0, 31.0)[0]


def test_quickstart_fails_when_memory_does_not_help(tmp_path, monkeypatch, capsys):
    # Every step but the evaluation is skipped; the evaluation finds memory useless.
    monkeypatch.setattr(quickstart, "run_quiet", lambda *a, **k: "")
    monkeypatch.setattr(quickstart, "run_showing_progress", lambda *a, **k: None)
    monkeypatch.setattr(quickstart, "read_training_log", lambda path: {"train": [], "valid": []})
    monkeypatch.setattr(quickstart, "plot_training_curves", lambda runs, out, **k: out)
    flat = [{"mem_len": 0, "loss": 4.0, "ppl": 16.0}, {"mem_len": 128, "loss": 3.9, "ppl": 14.9}]
    monkeypatch.setattr(quickstart, "sweep", lambda *a, **k: flat)
    assert quickstart.main(["--fast", "--out-dir", str(tmp_path)]) == 1
    assert "FAILED" in capsys.readouterr().err


def test_quickstart_runs_and_memory_lowers_perplexity(tmp_path):
    """The real pipeline (fewer updates): preprocess, fairseq-train, fairseq-eval-lm, plots; run
    as scripts/quickstart.sh runs it (by its path, the repository root on PYTHONPATH)."""
    out = tmp_path / "qs"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "quickstart", "quickstart.py"), "--fast",
         "--out-dir", str(out)],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=600,
    )
    log = proc.stdout
    assert proc.returncode == 0, log[-4000:]
    # training progress was shown as it ran (the records, from --log-interval 50 on)
    assert min(by_update(parse_training_log(log)["train"])) == 50, log[-4000:]
    no_memory = float(re.search(r"mem_len +0 \(no memory\) +: +([\d.]+)", log).group(1))
    memory = float(re.search(r"mem_len +\d+ \(memory\) +: +([\d.]+)", log).group(1))
    assert memory <= 0.8 * no_memory, log[-2000:]
    for png in ("ppl_vs_mem_len.png", "training_curve.png"):
        with open(out / png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert str(out / png) in log  # the paths are printed
    assert (out / "checkpoints" / "checkpoint_last.pt").exists()
    check_the_checkpoint_exports(out)


def check_the_checkpoint_exports(out):
    """The quickstart's checkpoint (1,016 symbols, cutoffs 2000,10000: no tail clusters) exports
    with truncated-bptt-export, and the scorer gives the eager model's log-probs."""
    import torch

    from inference_models import stream_segments
    from truncated_bptt.export_cli import load_model

    checkpoint, scorer_path = out / "checkpoints" / "checkpoint_last.pt", out / "model.ts"
    proc = subprocess.run(
        [sys.executable, "-m", "truncated_bptt.export_cli", str(checkpoint), str(scorer_path),
         "--data", str(out / "data-bin")],
        cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    model, _ = load_model(str(checkpoint), str(out / "data-bin"))
    assert model.decoder.softmax.n_clusters == 0
    scorer = torch.jit.load(str(scorer_path))
    stream = torch.randint(4, len(model.decoder.dictionary), (2, 41), generator=torch.Generator().manual_seed(0))
    reference = stream_segments(model, stream, 16)
    mems, got = [], []
    for start in range(0, 40, 16):
        targets = stream[:, start + 1:start + 17]
        log_probs, mems = scorer(stream[:, start:start + targets.size(1)], targets, mems)
        got.append(log_probs)
    torch.testing.assert_close(torch.cat(got, 1), torch.cat(reference, 1), rtol=1e-5, atol=1e-5)
