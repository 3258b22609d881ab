"""Softmax weights packed for oneDNN (inference on CPU): same scores as the plain path, and the
packed path demonstrably the one that ran."""
import platform

import pytest
import torch
import torch.nn.functional as F

from truncated_bptt import packed_weights
from truncated_bptt.packed_weights import PackedSoftmax, can_pack, pack, packed_linear
from truncated_bptt.projected_adaptive_softmax import ProjectedAdaptiveSoftmax


def test_packing_is_available_where_ci_runs():
    """On x86-64 Linux (CI, both stacks) torch has oneDNN: the tests below cannot fall back."""
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        assert packed_weights.packing_available()
    assert not can_pack(torch.zeros(2, 2, dtype=torch.float64))  # fp32 only


@pytest.mark.parametrize("rows", [1, 3, 64])
def test_packed_linear_equals_linear(rows):
    torch.manual_seed(0)
    weight, bias = torch.randn(300, 32), torch.randn(300)
    x = torch.randn(rows, 32)
    got = packed_linear(x, pack(weight), bias)
    want = (x.double() @ weight.double().t() + bias.double()).float()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def fp32_softmax(n_token, d_embed, d_proj, cutoffs, div_val):
    torch.manual_seed(0)
    sm = ProjectedAdaptiveSoftmax(n_token, d_embed, d_proj, cutoffs, div_val)
    with torch.no_grad():
        for p in sm.parameters():
            p.normal_(0, 0.5)
    return sm


@pytest.mark.parametrize("d_embed,d_proj,cutoffs,div_val", [
    (16, 16, [50, 120], 1),   # no projections (the benchmark's shape, scaled down)
    (16, 8, [50, 120], 1),    # one table, a projection per cluster
    (16, 8, [50, 120], 2),    # per-cluster tables and projections
    (16, 16, [], 1),          # plain softmax
])
@pytest.mark.parametrize("pack_tails", [True, False])
def test_packed_softmax_scores_as_the_plain_one(monkeypatch, d_embed, d_proj, cutoffs, div_val,
                                                 pack_tails):
    sm = fp32_softmax(200, d_embed, d_proj, cutoffs, div_val)
    packed = PackedSoftmax(0, sm.packed_clusters(pack_tails))
    assert [w.is_mkldnn for w, _, _ in packed.clusters] == [True] + [pack_tails] * len(cutoffs)
    assert packed.tails_packed == (pack_tails and len(cutoffs) > 0)
    calls = []
    real = packed_weights.packed_linear
    monkeypatch.setattr(packed_weights, "packed_linear",
                        lambda x, w, b: calls.append(x.size(0)) or real(x, w, b))
    hidden = torch.randn(7, d_proj)
    target = torch.tensor([0, 49, 50, 119, 120, 199, 3])  # head, both tails, their edges
    with torch.no_grad():
        plain_full, plain_picked = sm.log_probs(hidden), sm.target_log_probs(hidden, target)
        full, picked = sm.log_probs(hidden, packed), sm.target_log_probs(hidden, target, packed)
    # one product per packed cluster for the full rows, one per packed cluster with targets for
    # the picked ones (the plain tails go through their parameters)
    assert len(calls) == 2 * (len(cutoffs) + 1 if pack_tails else 1), calls
    torch.testing.assert_close(full, plain_full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(picked, plain_picked, rtol=1e-5, atol=1e-5)
