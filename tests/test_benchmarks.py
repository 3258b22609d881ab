"""The benchmark harness's own arithmetic and parsing (nothing here is timed; no benchmark env needed).

benchmarks/flops.py is checked against torch's FLOP counter on a deliberately naive Transformer-XL
layer and adaptive softmax written out below; benchmarks/compare.py's per-cluster target counts
against fairseq's own binarization, and its log parsing against fairseq-train's json log lines.
"""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import compare
from benchmarks.flops import (
    XLShape,
    eval_forward_flops,
    forward_flops,
    layer_forward_flops,
    softmax_forward_flops,
    tokens_per_cluster,
)

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


def quality_run(impl, budget, seed, init, ppl):
    return {"impl": impl, "budget": budget, "seed": seed, "init": init, "updates": 250,
            "test": {"short": {"ppl": ppl}}}


@pytest.mark.parametrize("example_ppls, ours_ppls, agree", [
    ([500.0, 520.0, 480.0], [490.0, 510.0, 505.0], True),   # overlapping seed spreads
    ([800.0, 1017.0, 1030.0], [668.0, 591.0, 562.0], False),  # separated (this machine, 2026-11-22)
    ([500.0], [450.0, 520.0, 480.0], True),                 # one example run inside our range
    ([800.0], [668.0, 591.0, 686.0], False),
])
def test_equal_updates_verdict_compares_both_seed_spreads(example_ppls, ours_ppls, agree):
    runs = {"example-time": quality_run("example", "time", 1, "example", example_ppls[0])}
    for seed, ppl in enumerate(example_ppls[1:], start=2):
        runs[f"example-updates-seed{seed}"] = quality_run("example", "updates", seed, "own", ppl)
    runs["ours-updates-example-init"] = quality_run("ours", "updates", 1, "example", ours_ppls[0])
    for seed, ppl in enumerate(ours_ppls[1:], start=1):
        runs[f"ours-updates-seed{seed}"] = quality_run("ours", "updates", seed, "own", ppl)
    runs["ours-time"] = quality_run("ours", "time", 1, "own", 100.0)  # not at equal updates: ignored
    sentence = compare.same_init_agreement(runs)
    assert ("the two agree" in sentence) == agree and ("NOT shown to agree" in sentence) == (not agree)
    assert compare.run_name(runs["example-time"]) == "example, time budget"
    if len(example_ppls) > 1:
        assert compare.run_name(runs["example-updates-seed2"]) == "example, same updates, own init seed 2"


def test_the_run_with_huggingface_initial_memory_is_reported_beside_the_verdict():
    runs = {"example-time": quality_run("example", "time", 1, "example", 800.0),
            "ours-updates-example-init": quality_run("ours", "updates", 1, "example", 668.0),
            "ours-updates-example-init-hf-memory": {**quality_run("ours", "updates", 1, "example", 790.0),
                                                    "hf_memory": True},
            "ours-updates": quality_run("ours", "updates", 1, "own", 591.0)}
    sentence = compare.same_init_agreement(runs)
    assert "ours 591.00 .. 668.00 over 2 runs" in sentence  # the HF-memory run is not one of ours' seeds
    assert ("ours reaches 790.00 against the example's 800.00 (ours / example - 1 = -1.2%), outside the "
            "example's range (800.00 .. 800.00)") in sentence
    assert compare.run_name(runs["ours-updates-example-init-hf-memory"]).endswith("and HF's zero initial memory")
