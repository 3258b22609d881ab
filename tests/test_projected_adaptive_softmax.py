"""Projected adaptive softmax and adaptive input: maths against a naive full softmax, tying, no N x V."""
import pytest
import torch
import torch.nn.functional as F

from truncated_bptt.adaptive_input import AdaptiveInput
from truncated_bptt.projected_adaptive_softmax import ProjectedAdaptiveSoftmax


def random_softmax(n_token, d_embed, d_proj, cutoffs, div_val):
    torch.manual_seed(0)
    sm = ProjectedAdaptiveSoftmax(n_token, d_embed, d_proj, cutoffs, div_val).double()
    with torch.no_grad():
        for p in sm.parameters():
            p.normal_(0, 0.5)
    return sm


def naive_log_probs(sm, hidden):
    """log p(w) written per token: head entry for head tokens, head(cluster) + tail for the others."""
    bounds, shortlist = sm.bounds, sm.shortlist
    out = torch.empty(hidden.size(0), sm.n_token, dtype=torch.float64)
    for c in range(len(bounds) - 1):
        if sm.div_val == 1:
            w = sm.out_layers[0].weight[bounds[c]:bounds[c + 1]]
            b = sm.out_layers[0].bias[bounds[c]:bounds[c + 1]]
        else:
            w, b = sm.out_layers[c].weight, sm.out_layers[c].bias
        h = hidden @ sm.out_projs[c] if len(sm.out_projs) else hidden
        if c == 0:
            w = torch.cat([w, getattr(sm, "cluster_weight", w[:0])])
            b = torch.cat([b, getattr(sm, "cluster_bias", b[:0])])
            head = torch.log_softmax(h @ w.t() + b, dim=-1)
            out[:, :shortlist] = head[:, :shortlist]
        else:
            tail = torch.log_softmax(h @ w.t() + b, dim=-1)
            out[:, bounds[c]:bounds[c + 1]] = head[:, shortlist + c - 1:shortlist + c] + tail
    return out


@pytest.mark.parametrize("d_embed,d_proj,cutoffs,div_val", [
    (6, 6, [5, 12], 1),   # no projections
    (6, 4, [5, 12], 1),   # one table, a projection per cluster
    (8, 4, [5, 12], 2),   # per-cluster tables and projections
    (6, 6, [], 1),        # plain softmax
])
def test_log_probs_match_naive_softmax(d_embed, d_proj, cutoffs, div_val):
    sm = random_softmax(20, d_embed, d_proj, cutoffs, div_val)
    hidden = torch.randn(7, d_proj, dtype=torch.float64)
    full = sm.log_probs(hidden)
    torch.testing.assert_close(full, naive_log_probs(sm, hidden))
    torch.testing.assert_close(full.exp().sum(-1), torch.ones(7, dtype=torch.float64))
    target = torch.tensor([0, 4, 5, 11, 12, 19, 3])
    torch.testing.assert_close(sm.target_log_probs(hidden, target), full.gather(1, target[:, None])[:, 0])


@pytest.mark.parametrize("rows", [1, 3])
def test_scoring_without_autograd_matches(rows):
    """Without autograd the logits take another matrix layout (faster on CPU); same values."""
    sm = random_softmax(20, 6, 6, [5, 12], 1)
    hidden = torch.randn(rows, 6, dtype=torch.float64)
    target = torch.tensor([0, 13, 7][:rows])
    with torch.no_grad():
        full, picked = sm.log_probs(hidden), sm.target_log_probs(hidden, target)
    torch.testing.assert_close(full, naive_log_probs(sm, hidden).detach())
    torch.testing.assert_close(picked, sm.target_log_probs(hidden, target).detach())


def test_target_log_probs_never_build_vocabulary_wide_logits(monkeypatch):
    sm = random_softmax(200, 8, 8, [20, 60], 1)
    widths = []
    linear = F.linear

    def recording_linear(x, w, b=None):
        widths.append(w.size(0))
        return linear(x, w, b)

    addmm = torch.addmm

    def recording_addmm(b, w, x):  # scoring without autograd: (w @ x^T)^T
        widths.append(w.size(0))
        return addmm(b, w, x)

    monkeypatch.setattr(F, "linear", recording_linear)
    monkeypatch.setattr(torch, "addmm", recording_addmm)
    target = torch.tensor([1, 2, 30, 150])
    for grad in (True, False):
        widths.clear()
        with torch.set_grad_enabled(grad):
            sm.target_log_probs(torch.randn(4, 8, dtype=torch.float64), target)
        # the head (20 tokens + 2 cluster entries, as one or two products), then each tail once
        assert sorted(widths) in ([2, 20, 40, 140], [22, 40, 140])


def test_gradients_through_the_shared_table_are_the_naive_ones():
    sm = random_softmax(20, 6, 6, [5, 12], 1)
    hidden = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 4, 5, 11, 12, 19, 3, 6, 13])
    sm.target_log_probs(hidden, target).sum().backward()
    ours = [hidden.grad.clone()] + [p.grad.clone() for p in sm.parameters()]
    sm.zero_grad()
    hidden.grad = None
    naive_log_probs(sm, hidden).gather(1, target[:, None]).sum().backward()
    for a, p in zip(ours, [hidden.grad] + [p.grad for p in sm.parameters()]):
        torch.testing.assert_close(a, p)


@pytest.mark.parametrize("div_val,d_embed,d_proj", [(1, 6, 6), (1, 6, 4), (2, 8, 4)])
def test_adaptive_input_embeds_each_cluster(div_val, d_embed, d_proj):
    torch.manual_seed(0)
    emb = AdaptiveInput(20, d_embed, d_proj, [5, 12], div_val)
    with torch.no_grad():
        for p in emb.parameters():
            p.normal_()
    tokens = torch.tensor([[0, 4, 5, 11], [12, 19, 3, 7]])
    out = emb(tokens)
    assert out.shape == (2, 4, d_proj)
    for b in range(2):
        for t in range(4):
            w = int(tokens[b, t])
            c = 0 if w < 5 else 1 if w < 12 else 2
            if div_val == 1:
                e = emb.emb_layers[0].weight[w]
                e = emb.emb_projs[0] @ e if len(emb.emb_projs) else e
            else:
                e = emb.emb_projs[c] @ emb.emb_layers[c].weight[w - [0, 5, 12][c]]
            torch.testing.assert_close(out[b, t], e * d_proj ** 0.5)
