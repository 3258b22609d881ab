"""The offline quickstart: its corpus, its pass/fail rule, and a real (reduced) run end to end."""
import math
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


def test_corpus_topics_recur_far_beyond_a_training_segment():
    corpus = make_corpus.make_corpus(seed=1, train_tokens=20000, valid_tokens=100, test_tokens=100)
    segment = quickstart.TRAIN_TOKENS_PER_SAMPLE
    docs = list(_documents(corpus["train"]))
    assert len(docs) > 20
    topics = set()
    tokens = mentions = far_mentions = 0
    for doc in docs:
        title = doc[0].split()
        assert title[0] == "=" and title[-1] == "="
        topic = frozenset(title[1:-1])
        assert len(topic) == 4 and all(make_corpus.is_topic_word(w) for w in topic)
        topics.add(topic)
        body = " ".join(doc[1:]).split()
        assert len(body) > segment
        # Every topic word of the body is one of the title's...
        assert {w for w in body if make_corpus.is_topic_word(w)} <= topic
        positions = [i for i, w in enumerate(body) if w in topic]
        tokens += len(body)
        mentions += len(positions)
        far_mentions += sum(i >= segment for i in positions)
    # ...about one token in twelve is one, and most come more than a training segment after the title.
    assert 0.05 < mentions / tokens < 0.12
    assert far_mentions / mentions > 0.6
    # Documents share the 8 topics (so which one is only known from the document), disjointly.
    assert len(topics) == 8 and len(frozenset().union(*topics)) == 32


def test_topic_words_are_the_made_up_ones():
    assert not any(make_corpus.is_topic_word(w) for w in ("the", ".", "=", "</s>", "famous", "river"))
    assert make_corpus.is_topic_word("gopizu")


def score(ppl, topic_loss):
    return quickstart.Score(mem_len=0, ppl=ppl, loss=math.log2(ppl), topic_loss=topic_loss,
                            topic_words=100, other_loss=1.0, other_words=900)


def test_check_needs_the_topic_gain_and_a_lower_perplexity():
    baseline = score(5.0, 4.0)
    assert quickstart.check(score(4.0, 3.5), baseline) == (True, pytest.approx(0.5))
    ok, gain = quickstart.check(score(4.0, 3.6), baseline)
    assert not ok and gain == pytest.approx(0.4)
    assert not quickstart.check(score(5.5, 2.0), baseline)[0]  # topic words alone are not enough


def test_word_losses_split_topic_words_from_the_rest():
    out = ("2026-12-01 04:00:00 | INFO | fairseq_cli.eval_lm | 0 the [-0.5]\tgopizu [-2.0]\t. [-0.1]\n"
           "2026-12-01 04:00:00 | INFO | fairseq_cli.eval_lm | 1 </s> [-0.2]\tgavepu [-4.0]\n")
    topic, n_topic, other, n_other = quickstart.word_losses(out)
    assert (n_topic, n_other) == (2, 3)
    assert topic == pytest.approx(3.0) and other == pytest.approx(0.8 / 3)


def test_quickstart_fails_when_memory_does_not_help(tmp_path, monkeypatch, capsys):
    # Every step but the evaluation is skipped; the evaluation finds memory useless.
    monkeypatch.setattr(quickstart, "run_quiet", lambda *a, **k: "")
    monkeypatch.setattr(quickstart, "run_showing_progress", lambda *a, **k: None)
    monkeypatch.setattr(quickstart, "read_training_log", lambda path: {"train": [], "valid": []})
    monkeypatch.setattr(quickstart, "plot_training_curves", lambda runs, out, **k: out)
    monkeypatch.setattr(quickstart, "score", lambda data, checkpoint, mem_len, env: score(5.0, 4.0))
    assert quickstart.main(["--fast", "--out-dir", str(tmp_path)]) == 1
    assert "FAILED" in capsys.readouterr().err


def test_quickstart_runs_and_the_memory_predicts_the_topic_words(tmp_path):
    """The real pipeline (fewer updates): preprocess, fairseq-train twice (mem_len 128 and 0),
    fairseq-eval-lm with per-word scores, plots; run as scripts/quickstart.sh runs it (by its path,
    the repository root on PYTHONPATH)."""
    out = tmp_path / "qs"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "quickstart", "quickstart.py"), "--fast",
         "--out-dir", str(out)],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=900,
    )
    log = proc.stdout
    assert proc.returncode == 0, log[-4000:]
    # training progress was shown as it ran (the records, from --log-interval 50 on)
    assert min(by_update(parse_training_log(log)["train"])) == 50, log[-4000:]
    rows = {m.group(1).strip(): (float(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"^    (trained with mem_len \d+, [^:]+): +([\d.]+) +([\d.]+) \(p", log, re.M)}
    baseline = rows["trained with mem_len 0, no memory"]
    memory = rows["trained with mem_len 128, mem_len 128"]
    assert memory[0] < baseline[0] and baseline[1] - memory[1] >= quickstart.REQUIRED_TOPIC_GAIN, log[-3000:]
    assert "quickstart: OK" in log
    for png in ("ppl_vs_mem_len.png", "training_curve.png"):
        with open(out / png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert str(out / png) in log  # the paths are printed
    assert (out / "checkpoints_mem0" / "checkpoint_last.pt").exists()
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
