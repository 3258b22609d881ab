"""Relative attention against a deliberately naive reference (explicit distances, no shift trick)."""
import math

import pytest
import torch

from truncated_bptt import relative_attention
from truncated_bptt.relative_attention import (
    RelativeMultiHeadAttention,
    attention_mask,
    expand_clamped_positions,
    position_encodings,
    position_index,
    rel_shift,
)


def naive_sinusoid(distance, d_model):
    """Encoding of one distance, written out element by element."""
    half = d_model // 2
    sin = [math.sin(distance / 10000 ** (2 * k / d_model)) for k in range(half)]
    cos = [math.cos(distance / 10000 ** (2 * k / d_model)) for k in range(half)]
    return torch.tensor(sin + cos, dtype=torch.float64)


def naive_attention(attn, h, mem, u, v, clamp_len, same_length, mem_len, same_length_mask="authors"):
    """Transformer-XL attention sublayer with explicit loops over queries, keys and heads.
    same_length: a query sees keys at most ``mem_len - 1`` positions back (the authors' code), or
    at most ``mem_len`` back (NVIDIA's code)."""
    farthest = mem_len - 1 if same_length_mask == "authors" else mem_len
    bsz, qlen, d_model = h.shape
    mlen = 0 if mem is None else mem.size(1)
    cat = h if mem is None else torch.cat([mem, h], dim=1)
    x = attn.layer_norm(cat) if attn.pre_lnorm else cat
    w_q, w_k, w_v = attn.qkv_net.weight.chunk(3, dim=0)
    n_head, d_head = attn.n_head, attn.d_head
    q = (x[:, mlen:] @ w_q.t()).view(bsz, qlen, n_head, d_head)
    k = (x @ w_k.t()).view(bsz, mlen + qlen, n_head, d_head)
    val = (x @ w_v.t()).view(bsz, mlen + qlen, n_head, d_head)
    out = torch.zeros(bsz, qlen, n_head, d_head, dtype=h.dtype)
    for b in range(bsz):
        for i in range(qlen):
            p = mlen + i
            for n in range(n_head):
                keys, scores = [], []
                for j in range(mlen + qlen):
                    dist = p - j
                    if dist < 0 or (same_length and dist > farthest):
                        continue
                    clamped = min(dist, clamp_len) if clamp_len > 0 else dist
                    r = (naive_sinusoid(clamped, d_model) @ attn.r_net.weight.t()).view(n_head, d_head)
                    content = (q[b, i, n] + u[n]) @ k[b, j, n]
                    position = (q[b, i, n] + v[n]) @ r[n]
                    keys.append(j)
                    scores.append((content + position) / math.sqrt(d_head))
                prob = torch.softmax(torch.stack(scores), dim=0)
                out[b, i, n] = sum(pr * val[b, j, n] for pr, j in zip(prob, keys))
    o = attn.o_net(out.reshape(bsz, qlen, n_head * d_head))
    return h + o if attn.pre_lnorm else attn.layer_norm(h + o)


def make_attention(pre_lnorm, n_head=2, d_model=8, d_head=3, implementation="reference"):
    torch.manual_seed(0)
    attn = RelativeMultiHeadAttention(n_head, d_model, d_head, dropout=0.0, dropatt=0.0,
                                      pre_lnorm=pre_lnorm, implementation=implementation).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.5)
    return attn.eval()


@pytest.mark.parametrize(
    "mlen,qlen,clamp_len,same_length,mem_len,pre_lnorm",
    [
        (0, 5, -1, False, 0, False),   # no memory
        (3, 4, -1, False, 3, False),   # memory
        (4, 3, 2, False, 4, True),     # clamp_len, pre-LayerNorm
        (3, 4, -1, True, 3, False),    # same_length, full memory
        (0, 6, -1, True, 4, False),    # same_length, first segment longer than mem_len
        (2, 3, 3, True, 5, True),      # same_length, memory not yet full, clamp
    ],
)
@pytest.mark.parametrize("implementation,distinct", [("reference", False), ("reference", True),
                                                    ("sdpa", True)])
def test_attention_matches_naive_reference(mlen, qlen, clamp_len, same_length, mem_len, pre_lnorm,
                                           implementation, distinct):
    attn = make_attention(pre_lnorm, implementation=implementation)
    bsz, d_model = 2, 8
    g = torch.Generator().manual_seed(1)
    h = torch.randn(bsz, qlen, d_model, generator=g, dtype=torch.float64)
    mem = torch.randn(bsz, mlen, d_model, generator=g, dtype=torch.float64) if mlen else None
    u = torch.randn(2, 3, generator=g, dtype=torch.float64)
    v = torch.randn(2, 3, generator=g, dtype=torch.float64)
    pos_emb = position_encodings(mlen + qlen, d_model, clamp_len, dtype=torch.float64,
                                 distinct=distinct)
    if distinct and 0 < clamp_len < mlen + qlen - 1:  # only the distinct clamped distances
        assert pos_emb.size(0) == clamp_len + 2
    mask = attention_mask(qlen, mlen, same_length, mem_len)
    ours = attn(h, pos_emb, mask, u, v, memory=mem)
    if mem is not None:  # the inference path: the memory's keys/values given, room for the segment's
        room = torch.full((bsz, mlen + qlen, 2, 2, 3), float("nan"), dtype=torch.float64)
        room[:, :mlen] = attn.memory_keys_values(mem)
        again = attn(h, pos_emb, mask, u, v, memory=mem * 0, keys_values=room)
        torch.testing.assert_close(again, ours)
        assert not room.isnan().any()  # the segment's keys/values were written after the memory's
    ref = naive_attention(attn, h, mem, u, v, clamp_len, same_length, mem_len)
    # encodings are computed in fp32 (as the originals do), hence not 1e-12
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    # and the gradients, to the input and every weight (q/k/v come out of the fused projection by
    # split/unbind, whose backward must add up to what the naive reference's autograd gives)
    weight = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    params = [h.requires_grad_(True)] + list(attn.parameters())
    ours = attn(h, pos_emb, mask, u, v, memory=mem)
    ref = naive_attention(attn, h, mem, u, v, clamp_len, same_length, mem_len)
    for a, b in zip(torch.autograd.grad((ours * weight).sum(), params, allow_unused=True),
                    torch.autograd.grad((ref * weight).sum(), params, allow_unused=True)):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mlen,qlen,mem_len", [(3, 4, 3), (0, 6, 4), (5, 1, 5)])
@pytest.mark.parametrize("implementation", ["reference", "sdpa"])
def test_nvidia_same_length_mask_matches_naive_reference(mlen, qlen, mem_len, implementation):
    """same_length_mask "nvidia": every query sees one key more than the authors' mask."""
    attn = make_attention(False, implementation=implementation)
    g = torch.Generator().manual_seed(2)
    h = torch.randn(2, qlen, 8, generator=g, dtype=torch.float64)
    mem = torch.randn(2, mlen, 8, generator=g, dtype=torch.float64) if mlen else None
    u, v = (torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(2))
    pos_emb = position_encodings(mlen + qlen, 8, -1, dtype=torch.float64)
    mask = attention_mask(qlen, mlen, True, mem_len, same_length_mask="nvidia")
    ours = attn(h, pos_emb, mask, u, v, memory=mem)
    ref = naive_attention(attn, h, mem, u, v, -1, True, mem_len, same_length_mask="nvidia")
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    authors = attn(h, pos_emb, attention_mask(qlen, mlen, True, mem_len), u, v, memory=mem)
    assert not torch.allclose(authors, ours)  # where the two masks differ, the outputs do


@pytest.mark.parametrize("mlen,qlen,same_length", [(0, 7, False), (9, 5, True), (6, 1, False)])
def test_fused_attention_equals_the_reference_with_gradients(mlen, qlen, same_length):
    """fp32: the sdpa kernel (position term as its bias) gives the reference's outputs and the
    gradients of every input and weight to 1e-5."""
    results = []
    for implementation in ("reference", "sdpa"):
        torch.manual_seed(0)
        attn = RelativeMultiHeadAttention(4, 16, 8, 0.0, 0.0, implementation=implementation)
        g = torch.Generator().manual_seed(1)
        h = torch.randn(2, qlen, 16, generator=g, requires_grad=True)
        mem = torch.randn(2, mlen, 16, generator=g) if mlen else None
        u, v = (torch.randn(4, 8, generator=g, requires_grad=True) for _ in range(2))
        mask = attention_mask(qlen, mlen, same_length, max(mlen, 1)) if qlen > 1 or same_length else None
        out = attn(h, position_encodings(mlen + qlen, 16, -1), mask, u, v, memory=mem)
        (out * torch.randn(out.shape, generator=g)).sum().backward()
        results.append([out, h.grad, u.grad, v.grad] + [p.grad for p in attn.parameters()])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.fixture
def indexed_calls(monkeypatch):
    """How many times the attention ran indexed_relative_attention (so a fallback cannot pass)."""
    calls = []
    kernel = relative_attention.indexed_relative_attention

    def counting(*args):
        calls.append(1)
        return kernel(*args)

    monkeypatch.setattr(relative_attention, "indexed_relative_attention", counting)
    return calls


@pytest.mark.parametrize(
    "mlen,qlen,clamp_len,same_length,mem_len,same_length_mask",
    [
        (0, 5, -1, False, 0, "authors"),   # no memory
        (3, 4, -1, False, 3, "authors"),   # memory
        (4, 3, 2, False, 4, "authors"),    # clamp_len
        (3, 4, -1, True, 3, "authors"),    # same_length, full memory
        (2, 3, 3, True, 5, "authors"),     # same_length, memory not yet full, clamp
        (6, 4, 3, True, 6, "nvidia"),      # NVIDIA's mask, clamp with fewer distinct distances
        (5, 1, 2, False, 5, "authors"),    # one query (generation), no mask
    ],
)
@pytest.mark.parametrize("distinct", [False, True])
def test_indexed_attention_matches_naive_reference(mlen, qlen, clamp_len, same_length, mem_len,
                                                   same_length_mask, distinct, indexed_calls):
    """The inference kernel (position scores realigned and masked by one gather, the content term
    added by the GEMM) against the naive loops, and equal to the reference kernel; fp64."""
    attn = make_attention(True, implementation="auto")
    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, qlen, 8, generator=g, dtype=torch.float64)
    mem = torch.randn(2, mlen, 8, generator=g, dtype=torch.float64) if mlen else None
    u, v = (torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(2))
    enc = position_encodings(mlen + qlen, 8, clamp_len, dtype=torch.float64, distinct=distinct)
    mask = attention_mask(qlen, mlen, same_length, mem_len, same_length_mask=same_length_mask) \
        if qlen > 1 or same_length else None
    index = position_index(qlen, mlen, enc.size(0) - 1, mask)
    ours = attn(h, enc, mask, u, v, memory=mem, position_index=index)
    assert len(indexed_calls) == 1
    ref = naive_attention(attn, h, mem, u, v, clamp_len, same_length, mem_len, same_length_mask)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    reference = attn(h, enc, mask, u, v, memory=mem)  # no index: the reference kernel
    assert len(indexed_calls) == 1
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


def test_indexed_attention_is_only_for_auto_in_eval_and_full_precision(indexed_calls):
    attn = make_attention(False, implementation="auto").float()
    h, enc = torch.randn(1, 4, 8), position_encodings(4, 8, -1)
    mask = attention_mask(4, 0, False, 0)
    index = position_index(4, 0, enc.size(0) - 1, mask)
    args = (h, enc, mask, torch.randn(2, 3), torch.randn(2, 3))
    attn(*args, position_index=index)
    assert len(indexed_calls) == 1
    attn.train()(*args, position_index=index)
    attn.eval().implementation = "reference"
    attn(*args, position_index=index)
    attn.implementation = "auto"
    attn.bfloat16()(h.bfloat16(), enc.bfloat16(), mask, args[3].bfloat16(), args[4].bfloat16(),
                    position_index=index)
    assert len(indexed_calls) == 1


def test_position_index_points_at_each_pairs_distance_and_masked_pairs_at_the_pad():
    """Written out: column P - min(d, P - 1) for distance d, column 0 where masked."""
    qlen, mlen, mem_len = 3, 5, 5
    for positions in (mlen + qlen, 4):  # all distances, or the distinct ones of clamp_len 3
        mask = attention_mask(qlen, mlen, True, mem_len)
        index = position_index(qlen, mlen, positions, mask)
        assert index.shape == (qlen, mlen + qlen) and index.dtype == torch.int64
        for i in range(qlen):
            for j in range(mlen + qlen):
                distance = mlen + i - j
                want = 0 if mask[i, j] else positions - min(distance, positions - 1)
                assert index[i, j] == want
                if not mask[i, j]:
                    assert 1 <= want <= positions


def test_expanding_distinct_clamped_scores_gives_the_full_scores():
    g = torch.Generator().manual_seed(0)
    full_enc = position_encodings(9, 8, 3)
    distinct_enc = position_encodings(9, 8, 3, distinct=True)
    assert full_enc.shape == (10, 8) and distinct_enc.shape == (5, 8)
    q = torch.randn(2, 4, 8, generator=g)
    expanded = expand_clamped_positions(q @ distinct_enc.t(), 9)
    torch.testing.assert_close(expanded, q @ full_enc.t())
    assert expanded.is_contiguous()


def test_rel_shift_realigns_distances():
    qlen, klen = 3, 5  # mlen = 2
    # x[i, c] = 100 * i + (distance of encoding row c) ; row c stands for distance klen - 1 - c
    x = torch.tensor([[100.0 * i + (klen - 1 - c) for c in range(klen)] for i in range(qlen)])
    shifted = rel_shift(torch.nn.functional.pad(x, (1, 0)).contiguous().view(1, 1, qlen, klen + 1))[0, 0]
    for i in range(qlen):
        for j in range(klen):
            if j <= 2 + i:  # visible: the entry is the score for distance mlen + i - j
                assert shifted[i, j] == 100.0 * i + (2 + i - j)


def test_masks():
    causal = attention_mask(2, 3, same_length=False, mem_len=3)
    assert causal.tolist() == [[False] * 4 + [True], [False] * 5]
    same = attention_mask(2, 3, same_length=True, mem_len=3)
    # each query sees exactly mem_len = 3 keys: itself and the two before it
    assert (~same).sum(1).tolist() == [3, 3]
    assert same.tolist() == [[True, False, False, False, True], [True, True, False, False, False]]
    nvidia = attention_mask(2, 3, same_length=True, mem_len=3, same_length_mask="nvidia")
    # NVIDIA's: mem_len + 1 = 4 keys, the whole full memory
    assert nvidia.tolist() == [[False, False, False, False, True], [True, False, False, False, False]]
    with pytest.raises(ValueError, match="same_length_mask must be 'authors' or 'nvidia'"):
        attention_mask(2, 3, True, 3, same_length_mask="nvidea")


@pytest.mark.parametrize("dtype,tolerance", [(torch.bfloat16, 0.03), (torch.float16, 0.003)])
def test_half_precision_attention_is_close_to_fp32(dtype, tolerance):
    """Scores are masked and normalised in fp32: half-precision outputs stay within ``tolerance``
    of fp32 (measured 0.012 for bf16, 0.0009 for fp16; outputs are about 1 after LayerNorm)."""
    torch.manual_seed(0)
    attn = RelativeMultiHeadAttention(2, 8, 4, 0.0, 0.0).eval()
    h, mem = torch.randn(2, 4, 8), torch.randn(2, 3, 8)
    u, v = torch.randn(2, 4) * 0.1, torch.randn(2, 4) * 0.1
    mask = attention_mask(4, 3, False, 3)
    reference = attn(h, position_encodings(7, 8, -1), mask, u, v, memory=mem)
    half = attn.to(dtype)
    out = half(h.to(dtype), position_encodings(7, 8, -1, dtype=dtype), mask, u.to(dtype), v.to(dtype),
               memory=mem.to(dtype))
    assert out.dtype == dtype
    assert (out.float() - reference).abs().max() < tolerance
