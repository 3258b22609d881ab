"""The benchmark harness's own arithmetic and parsing (nothing here is timed; no benchmark env needed).

benchmarks/flops.py is checked against torch's FLOP counter on a deliberately naive Transformer-XL
layer and adaptive softmax written out below; benchmarks/compare.py's per-cluster target counts
against fairseq's own binarization, and its log parsing against fairseq-train's json log lines.
"""
import argparse
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import compare, equal_updates
from benchmarks.flops import (
    XLShape,
    eval_forward_flops,
    forward_flops,
    layer_forward_flops,
    softmax_forward_flops,
    tokens_per_cluster,
)
from fairseq_commands import ROOT, cli_env

SHAPE = XLShape(n_layer=2, d_model=16, n_head=2, d_head=8, d_inner=32, vocab=50, cutoffs=[10, 30, 80])


def naive_layer_flops(s: XLShape, batch: int, tgt: int, mem: int) -> int:
    """Count (with torch's FlopCounterMode) the matmuls of a plain relative-attention layer."""
    d, H, h, f = s.d_model, s.n_head, s.d_head, s.d_inner
    x = torch.randn(batch, tgt, d)
    m = torch.randn(batch, mem, d)
    r = torch.randn(mem + tgt, d)
    wq, wk, wv, wr = (torch.randn(d, H * h) for _ in range(4))
    wo, w1, w2 = torch.randn(H * h, d), torch.randn(d, f), torch.randn(f, d)
    with FlopCounterMode(display=False) as counter:
        cat = torch.cat([m, x], 1)
        q = (x @ wq).view(batch, tgt, H, h)
        k = (cat @ wk).view(batch, mem + tgt, H, h)
        v = (cat @ wv).view(batch, mem + tgt, H, h)
        rk = (r @ wr).view(mem + tgt, H, h)
        ac = torch.einsum("bthd,bkhd->bhtk", q, k)
        bd = torch.einsum("bthd,khd->bhtk", q, rk)
        p = torch.softmax(ac + bd, -1)
        o = torch.einsum("bhtk,bkhd->bthd", p, v).reshape(batch, tgt, H * h) @ wo
        torch.relu(o @ w1) @ w2
    return counter.get_total_flops()


@pytest.mark.parametrize("batch,tgt,mem", [(1, 5, 0), (3, 4, 7)])
def test_layer_flops_match_naive_layer(batch, tgt, mem):
    assert layer_forward_flops(SHAPE, batch, tgt, mem) == naive_layer_flops(SHAPE, batch, tgt, mem)


def test_softmax_flops_count_head_and_only_the_targets_tails():
    s = XLShape(n_layer=1, d_model=16, n_head=2, d_head=8, d_inner=32, vocab=50, cutoffs=[10, 30],
                d_embed=16, div_val=2)
    targets = [1, 2, 12, 40, 41, 45]
    counts = tokens_per_cluster(targets, s)
    assert counts == [2, 1, 3]
    # naive: head over all 6 tokens (10 words + 2 cluster logits, width 16, no projection);
    # tail 1: width 8 (projection 16->8) over its 20 words for 1 token; tail 2: width 4, 20 words, 3 tokens.
    expected = 2 * 6 * 16 * 12 + 2 * 1 * (16 * 8 + 8 * 20) + 2 * 3 * (16 * 4 + 4 * 20)
    assert softmax_forward_flops(s, counts) == expected


def test_cutoffs_beyond_the_vocabulary_are_dropped():
    assert SHAPE.cluster_bounds() == [0, 10, 30, 50]
    with pytest.raises(ValueError, match="3 per-cluster"):
        softmax_forward_flops(SHAPE, [1, 2])


def test_eval_flops_follow_the_memory_as_it_fills():
    counts = [7, 2, 1]  # 10 tokens, 2 streams of 5, segments of 2: memory 0, 2, then 3 (mem_len 3)
    layers = (layer_forward_flops(SHAPE, 2, 2, 0) + layer_forward_flops(SHAPE, 2, 2, 2)
              + layer_forward_flops(SHAPE, 2, 1, 3))
    expected = SHAPE.n_layer * layers + softmax_forward_flops(SHAPE, counts)
    assert eval_forward_flops(SHAPE, 10, 2, 2, 3, counts) == pytest.approx(expected)
    full = forward_flops(SHAPE, 2, 2, 3, counts)
    assert full > 0


def test_split_cluster_counts_agree_with_fairseq_binarization(tmp_path):
    from fairseq.data import Dictionary

    text = tmp_path / "t.txt"
    text.write_text("a b c a\n\nd e zz a\nb b b b b b\n", encoding="utf-8")
    d = Dictionary()
    for line in text.read_text().splitlines()[:2]:
        for w in line.split():
            d.add_symbol(w)
    d.add_symbol("b", n=10)
    d.finalize()
    d.save(str(tmp_path / "dict.txt"))
    shape = XLShape(1, 4, 1, 4, 4, vocab=len(d), cutoffs=[5, 7])
    ids = []
    for line in text.read_text().splitlines():
        ids += d.encode_line(line, add_if_not_exist=False).tolist()
    assert compare.split_cluster_counts(str(tmp_path), str(text), shape) == tokens_per_cluster(ids, shape)


def test_train_log_parsing():
    text = (
        '2026-11-21 22:00:01 | INFO | train_inner | {"epoch": 1, "update": 0.01, "loss": "12.1", '
        '"ppl": "4390.2", "wps": "1010.5", "num_updates": "10", "wall": "12"}\n'
        '2026-11-21 22:00:09 | INFO | train_inner | {"epoch": 1, "update": 0.02, "loss": "10.0", '
        '"ppl": "1024", "wps": "1100", "num_updates": "20", "wall": "21"}\n'
        '2026-11-21 22:00:10 | INFO | train | {"epoch": 1, "train_loss": "10.5", "train_num_updates": "23"}\n'
    )
    assert compare.train_log(text) == [
        {"update": 10, "ppl": 4390.2, "wall": 12.0, "wps": 1010.5},
        {"update": 20, "ppl": 1024.0, "wall": 21.0, "wps": 1100.0},
    ]
    assert compare.final_updates(text) == 23


def quality_run(impl, budget, seed, ppl, matched=False, curve=()):
    return {"impl": impl, "budget": budget, "seed": seed, "matched": matched, "updates": 250,
            "test": {"short": {"ppl": ppl}}, "curve": list(curve)}


@pytest.mark.parametrize("example_ppls, ours_ppls, status", [
    ([797.0, 1022.0, 1024.0], [805.0, 1010.0, 1030.0], equal_updates.AGREE),  # within 3 %, seeds 28 %
    ([797.0, 1022.0, 1024.0], [805.0, 1010.0, 1060.0], equal_updates.DISAGREE),  # one pair +3.5 %
    # this machine, 2026-11-22: the example's weights and zero initial memory, ours 1018.39
    ([796.81], [1018.39], equal_updates.DISAGREE),
    ([797.0], [800.0], equal_updates.INCONCLUSIVE),  # one seed cannot tell
    ([500.0, 505.0, 502.0], [501.0, 506.0, 500.0], equal_updates.INCONCLUSIVE),  # seeds spread 1 %
])
def test_equal_updates_verdict(example_ppls, ours_ppls, status):
    pairs = [equal_updates.Pair(k, e, o) for k, (e, o) in enumerate(zip(example_ppls, ours_ppls), 1)]
    result = equal_updates.verdict(pairs, tolerance=0.03)
    assert result.status == status
    word = {equal_updates.AGREE: "AGREE", equal_updates.DISAGREE: "DISAGREE",
            equal_updates.INCONCLUSIVE: "INCONCLUSIVE"}[status]
    assert f"Verdict: the two {word}" in result.text or f"Verdict: {word}" in result.text
    assert f"seed 1: example {example_ppls[0]:.2f}, ours {ours_ppls[0]:.2f}" in result.text


def test_example_curves_are_converted_to_per_scored_token():
    curve = [{"update": 25, "ppl": 2.0 ** 9}, {"update": 50, "ppl": 2.0 ** 8}]
    example = equal_updates.per_scored_token(curve, "example", tokens_per_sample=64)
    assert [r["ppl"] for r in example] == pytest.approx([2.0 ** (9 * 64 / 63), 2.0 ** (8 * 64 / 63)])
    assert equal_updates.per_scored_token(curve, "ours", 64) == curve
    ours = [{"update": 25, "ppl": 2.0 ** 9.2}, {"update": 75, "ppl": 2.0}]  # update 75: not in both
    gap = equal_updates.largest_curve_gap_bits(curve, ours, tokens_per_sample=64)
    assert gap == pytest.approx(abs(9.2 - 9 * 64 / 63))


def test_equal_updates_report_pairs_the_matched_runs_by_seed():
    runs = {
        "example-time": quality_run("example", "time", 1, 800.0, curve=[{"update": 25, "ppl": 1024.0}]),
        "example-updates-seed2": quality_run("example", "updates", 2, 1000.0),
        "ours-matched-seed1": quality_run("ours", "updates", 1, 810.0, True,
                                          [{"update": 25, "ppl": 2.0 ** (10 * 64 / 63 + 0.01)}]),
        "ours-matched-seed2": quality_run("ours", "updates", 2, 990.0, True),
        "ours-updates-seed1": quality_run("ours", "updates", 1, 600.0),
        "ours-time": quality_run("ours", "time", 1, 190.0),  # not at equal updates
    }
    assert [(p.seed, p.example_ppl, p.ours_ppl) for p in compare.matched_pairs(runs)] == [
        (1, 800.0, 810.0), (2, 1000.0, 990.0)]
    text = compare.equal_updates_report({"runs": runs, "agreement_tolerance": 0.03, "tokens_per_sample": 64})
    assert "Verdict: the two AGREE" in text
    assert "at most 0.010 bits apart" in text  # the example's 10 bits per position = 10 * 64/63 per token
    assert "defaults (own init, empty initial memory, every token a target) at the same updates: 600.00" in text
    assert compare.run_name(runs["ours-matched-seed2"]).startswith("ours matched, seed 2")


def test_quality_plan_pairs_every_seed(tmp_path):
    args = argparse.Namespace(matched_seeds=2, quality_seeds=1)
    init = {s: {"example": f"ex{s}.pt", "ours": f"ours{s}.pt"} for s in (1, 2)}
    plan = {p["label"]: p for p in compare.quality_plan(args, init)}
    assert list(plan) == ["example-time", "example-updates-seed2", "ours-matched-seed1",
                          "ours-matched-seed2", "ours-updates-seed1", "ours-time"]
    assert plan["example-time"]["init_from"] == "ex1.pt" and plan["example-time"]["budget"] == "time"
    assert plan["ours-matched-seed2"]["init_from"] == "ours2.pt" and plan["ours-matched-seed2"]["matched"]
    assert plan["ours-updates-seed1"]["init_from"] is None and not plan["ours-updates-seed1"]["matched"]
    assert compare.MATCHED_FLAGS == ["--zero-initial-memory", "--data-layout", "fairseq_example"]


def test_quality_plot_states_the_per_token_conversion(tmp_path):
    from benchmarks import quality_plot

    curve = [{"update": 25, "wall": 10.0, "ppl": 900.0}, {"update": 50, "wall": 20.0, "ppl": 700.0}]
    runs = {label: {**quality_run(impl, budget, 1, 500.0, matched, curve), "name": label,
                    "test": {"short": {"ppl": 500.0}, "long": {"ppl": 510.0}}}
            for label, impl, budget, matched in (("example-time", "example", "time", False),
                                                 ("ours-matched-seed1", "ours", "updates", True))}
    path = str(tmp_path / "quality.png")
    quality_plot.plot_quality({"runs": runs, "budget_minutes": 3, "tokens_per_sample": 64}, path)
    assert os.path.getsize(path) > 10_000


def test_softmax_layout_script_checks_and_writes_every_layout(tmp_path):
    """benchmarks/softmax_layout.py (quoted in docs/model.md): each layout's values are checked
    against F.linear before it is timed, and every row lands in its results file."""
    subprocess.run([sys.executable, "-m", "benchmarks.softmax_layout", "--repeats", "1", "--d", "32",
                    "--out", str(tmp_path)], cwd=ROOT, env=cli_env(), check=True,
                   stdout=subprocess.PIPE)
    (written,) = tmp_path.iterdir()
    assert written.name.startswith("softmax-layout-") and written.suffix == ".txt"
    rows = written.read_text().splitlines()[2:]
    assert len(rows) == 3 * 6 and all(row.rstrip().endswith("x") for row in rows)


def test_tied_table_speed_script_checks_gradients_and_writes_both_variants(tmp_path):
    """benchmarks/tied_table_speed.py (quoted in docs/model.md): it checks the two variants'
    gradients agree (and that each variant really ran) before timing, and writes both rows."""
    subprocess.run([sys.executable, "-m", "benchmarks.tied_table_speed", "--rounds", "1", "--steps", "1",
                    "--out", str(tmp_path)], cwd=ROOT, env=cli_env(), check=True, stdout=subprocess.PIPE)
    (written,) = tmp_path.iterdir()
    assert written.name.startswith("tied-table-") and written.suffix == ".txt"
    text = written.read_text()
    worst = float(text.split("largest entry: ")[1].split()[0])
    assert worst < 1e-5
    assert "\nplain " in text and "\none node " in text and "x faster" in text


def test_scoring_attention_speed_script_checks_both_kernels_and_writes_both_variants(tmp_path):
    """benchmarks/scoring_attention_speed.py (quoted in docs/model.md): it checks that each variant
    ran its kernel and that their log-probabilities agree before timing, and writes both rows."""
    subprocess.run([sys.executable, "-m", "benchmarks.scoring_attention_speed", "--rounds", "1",
                    "--segments", "12", "--out", str(tmp_path)], cwd=ROOT, env=cli_env(), check=True,
                   stdout=subprocess.PIPE)
    (written,) = tmp_path.iterdir()
    assert written.name.startswith("scoring-attention-") and written.suffix == ".txt"
    text = written.read_text()
    assert float(text.split("indexed vs reference: ")[1].split()[0]) < 1e-5
    assert "\nindexed " in text and "\nreference " in text and "indexed faster in " in text


def test_packed_tails_speed_script_times_both_variants_at_every_step_size(tmp_path):
    """benchmarks/packed_tails_speed.py (quoted in docs/model.md): per segments-per-step both
    variants' rounds and their ratio, and each variant's copy size (the script itself refuses a
    round whose variant was not the one the decoder used, and scores that disagree)."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.packed_tails_speed", "--rounds", "1",
                          "--tokens", "256", "--segments-per-step", "1,2", "--out", str(tmp_path)],
                         cwd=ROOT, env=cli_env(), check=True, stdout=subprocess.PIPE, text=True).stdout
    (written,) = tmp_path.iterdir()
    assert written.name.startswith("packed-tails-") and written.read_text() in out
    assert "1 segment(s) per step (64 rows" in out and "2 segment(s) per step (128 rows" in out
    assert out.count("\nall packed  ") == 2 and out.count("\nhead packed  ") == 2
    assert out.count("head packed / all packed (best rounds): ") == 2
    all_mb, head_mb = (float(out.split(f"{v} ")[1].split(" MB")[0]) for v in ("all packed", "head packed"))
    assert head_mb < all_mb


def test_profile_model_reports_the_softmax_products_beside_the_bytes_they_read(tmp_path):
    """benchmarks/profile_model.py (quoted in docs/benchmarks.md): both profiles, and for scoring the
    softmax products' time beside the weights they read and the machine's streaming bandwidth."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.profile_model", "--steps", "1",
                          "--out", str(tmp_path)], cwd=ROOT, env=cli_env(), check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    (written,) = tmp_path.iterdir()
    assert written.name.startswith("profile-") and written.read_text() in out
    assert "training step" in out and "scoring step" in out
    read_mb = float(out.split("reading ")[1].split(" MB")[0])
    assert read_mb > 4 * 256 * 2002 / 1e6  # at least the head's weights every step
    assert float(out.split("(main memory): ")[1].split(" GB/s")[0]) > 0


def test_scoring_cache_script_times_every_part_three_ways(tmp_path):
    """benchmarks/scoring_cache.py (quoted in docs/benchmarks.md): one row per layer and one for the
    softmax, in the loop / hot / cold, whose sums are the sum row."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.scoring_cache", "--repeats", "1",
                          "--segments", "2", "--flush-mb", "8", "--out", str(tmp_path)], cwd=ROOT,
                         env=cli_env(), check=True, stdout=subprocess.PIPE, text=True).stdout
    (written,) = tmp_path.iterdir()
    assert written.name.startswith("scoring-cache-") and written.read_text() in out
    lines = out.splitlines()
    rows = [line for line in lines if line.startswith(("layer ", "softmax "))]
    assert [row.split()[0] for row in rows] == ["layer"] * 4 + ["softmax"]
    columns = [[float(v) for v in row.split()[-3:]] for row in rows]
    (total,) = [line for line in lines if line.startswith("sum of the parts")]
    for n, value in enumerate(float(v) for v in total.split()[-3:]):
        assert abs(sum(c[n] for c in columns) - value) < 0.03
    assert "with every part hot a segment would take" in out and "256 MB" in out


def test_scoring_cache_replays_are_checked_against_the_pass(monkeypatch):
    """A part whose replay computes something else than the pass did is refused, not timed."""
    from benchmarks import scoring_cache
    from benchmarks.profile_model import build_auto

    torch.manual_seed(0)
    decoder, stream = build_auto(None)
    stream = stream.reshape(1, -1)
    decoder.set_memory_options(mem_len=128, clamp_len=0, same_length=False)
    decoder.eval()
    with torch.no_grad():
        parts = scoring_cache.capture_parts(decoder, stream, 0)
        assert [name for name, _ in parts] == ["layer 0", "layer 1", "layer 2", "layer 3",
                                               "softmax (target_log_probs)"]
        forward = type(decoder.layers[2].ff).forward
        monkeypatch.setattr(decoder.layers[2].ff, "forward",
                            lambda h: forward(decoder.layers[2].ff, h) + torch.rand(()))
        with pytest.raises(RuntimeError, match="replaying layer 2 gave another result"):
            scoring_cache.capture_parts(decoder, stream, 1)


def test_training_matmuls_records_the_flops_torch_counts():
    """benchmarks/training_matmuls.py's recorder, against torch's own FLOP counter on one training
    step of the benchmark model: the same products, the same FLOPs."""
    from benchmarks import training_matmuls
    from benchmarks.profile_model import build_auto, training_step

    decoder, stream = build_auto(None)
    decoder.train()
    recorder = training_matmuls.ProductRecorder()
    with FlopCounterMode(display=False) as counter, recorder:
        training_step(decoder, stream, 0)
    ours = sum(training_matmuls.flops(name, list(layouts)) * len(times)
               for (name, layouts), times in recorder.calls.items())
    assert ours == counter.get_total_flops() > 20e9
    names = {name for name, _ in recorder.calls}
    assert names == {"mm", "bmm", "addmm"}  # forward and backward, the softmax's mm.out included


def test_training_matmuls_script_sums_its_products(tmp_path):
    """benchmarks/training_matmuls.py (quoted in docs/benchmarks.md), tiny timings: its summary
    counts the products and FLOPs its table lists."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.training_matmuls", "--steps", "1",
                          "--seconds", "0.01", "--peak-seconds", "0.05", "--out", str(tmp_path)],
                         cwd=ROOT, env=cli_env(), check=True, stdout=subprocess.PIPE, text=True).stdout
    (written,) = tmp_path.iterdir()
    assert written.name.startswith("training-matmuls-") and written.read_text() in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("mm ", "bmm ", "addmm "))]
    calls = sum(int(row[-6]) for row in rows)
    gflop = sum(float(row[-5]) for row in rows)
    summary = out.split(" matrix products a step, ")
    assert int(summary[0].split()[-1]) == calls
    assert abs(float(summary[1].split(" GFLOP")[0]) - gflop) < 0.01 * len(rows)
    for label in ("the whole step", "its products inside the step", "the same products, each alone"):
        assert label in out
    assert "so if nothing but the products took time" in out


def test_eval_rows_keep_ours_one_segment_per_step_apart():
    """The eval-lm rounds of ours with --eval-segments-per-step 1 form a row of their own beside
    the default's (labelled with the segments per step its log names); the example has none."""
    log = "INFO | scoring speedtest in 1 stream(s) of ~16,444 tokens, segments of 64 tokens, 8 per step"
    assert compare.segments_per_step(log) == 8
    assert compare.segments_per_step("Evaluated 16,444 tokens") is None
    entries = [
        {"impl": compare.OURS, "batch": 1, "dtype": "fp32", "segments": None, "steps_of": 8, "tokens_per_s": 9.0},
        {"impl": compare.OURS, "batch": 1, "dtype": "fp32", "segments": 1, "steps_of": 1, "tokens_per_s": 5.0},
        {"impl": compare.OURS, "batch": 1, "dtype": "fp32", "segments": None, "steps_of": 8, "tokens_per_s": 8.0},
        {"impl": compare.EXAMPLE, "batch": 1, "dtype": "fp32", "segments": None, "steps_of": None,
         "tokens_per_s": 2.0},
    ]
    rows = compare.best_rounds(entries)
    assert [(r["segments"], r["tokens_per_s"], r["tokens_per_s_rounds"]) for r in rows] == [
        (None, 9.0, [9.0, 8.0]), (1, 5.0, [5.0]), (None, 2.0, [2.0])]
    assert [compare.eval_label(r) for r in rows] == [
        "ours (8 segments per step)", "ours, --eval-segments-per-step 1", "fairseq example (HF TransfoXL)"]
    assert compare.eval_label({"impl": compare.OURS, "steps_of": 1}) == "ours (1 segment per step)"
