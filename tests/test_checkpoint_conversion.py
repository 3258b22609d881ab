"""Checkpoint conversion: NVIDIA-format and HuggingFace TransfoXL weights -> fairseq checkpoint whose
log-probs equal the source's (fp32, 1e-5) over consecutive segments with memory, and which
fairseq-eval-lm loads directly."""
import math
import os
import pickle
import subprocess
import sys
import types
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from examples.fairseq_logs import parse_eval_lm
from fairseq_commands import ROOT, USER_DIR, cli_env, run
from inference_models import binarize, stream_segments
from truncated_bptt import checkpoint_conversion as cc

# Source vocabulary: "<eos>" first (as wt103's), "<unk>" inside the head cluster.
SYMBOLS = ["<eos>", "the", ",", "."] + [f"w{i}" for i in range(4, 50)]
SYMBOLS[7] = "<unk>"
CUTOFFS = [20, 35]


# ----------------------------------------------------------------------------- vocabulary map
def test_vocabulary_map_moves_source_specials_onto_fairseq_specials():
    vmap = cc.map_vocabulary(SYMBOLS, CUTOFFS)
    assert vmap.source_id[:4] == [-1, -1, 0, 7]
    assert vmap.words == [s for s in SYMBOLS if s not in ("<eos>", "<unk>")]
    assert vmap.cutoffs == [22, 37] and len(vmap.source_id) == len(SYMBOLS) + 2
    # tail clusters are the source's, shifted by 2, in order
    assert vmap.source_id[22:37] == list(range(20, 35)) and vmap.source_id[37:] == list(range(35, 50))


def test_vocabulary_map_refuses_what_it_cannot_map_exactly():
    tail_unk = list(SYMBOLS)
    tail_unk[7], tail_unk[30] = tail_unk[30], "<unk>"
    with pytest.raises(ValueError, match="'<unk>' .* tail cluster"):
        cc.map_vocabulary(tail_unk, CUTOFFS)
    with pytest.raises(ValueError, match="'<pad>', one of fairseq's special"):
        cc.map_vocabulary(SYMBOLS[:10] + ["<pad>"] + SYMBOLS[11:], CUTOFFS)
    no_specials = cc.map_vocabulary([f"x{i}" for i in range(30)], [10])
    assert no_specials.source_id[:4] == [-1, -1, -1, -1] and no_specials.cutoffs == [14]


# ----------------------------------------------------------------------------- NVIDIA
NVIDIA_CONFIGS = {
    "div_val2_tied": dict(d_embed=12, div_val=2, tie_weight=True, tie_projs=[False, True, True],
                          pre_lnorm=False, clamp_len=-1, same_length=False),
    "div_val1_untied_pre_norm": dict(d_embed=16, div_val=1, tie_weight=False,
                                     tie_projs=[False, False, False], pre_lnorm=True, clamp_len=3,
                                     same_length=False),
    "div_val2_tied_same_length": dict(d_embed=12, div_val=2, tie_weight=True,
                                      tie_projs=[False, True, True], pre_lnorm=False, clamp_len=-1,
                                      same_length=True),
}


def nvidia_checkpoint(variant, seed=0):
    """(model_config, model_state) with NVIDIA MemTransformerLM's parameter names and shapes."""
    g = torch.Generator().manual_seed(seed)
    cfg = dict(n_token=len(SYMBOLS), n_layer=2, n_head=2, d_model=16, d_head=8, d_inner=32,
               dropout=0.0, dropatt=0.0, dtype=None, tgt_len=6, ext_len=0, mem_len=5,
               cutoffs=list(CUTOFFS), attn_type=0, sample_softmax=-1, **NVIDIA_CONFIGS[variant])

    def rnd(*shape, mean=0.0):
        return torch.randn(*shape, generator=g) * 0.5 + mean

    d, hd, de = cfg["d_model"], cfg["n_head"] * cfg["d_head"], cfg["d_embed"]
    bounds = [0] + CUTOFFS + [len(SYMBOLS)]
    sd = {"r_w_bias": rnd(2, 8), "r_r_bias": rnd(2, 8),
          "pos_emb.inv_freq": 1 / (10000 ** (torch.arange(0.0, d, 2.0) / d)),
          "crit.cluster_weight": rnd(2, de), "crit.cluster_bias": rnd(2)}
    if cfg["div_val"] == 1:
        sd["word_emb.emb_layers.0.weight"] = rnd(len(SYMBOLS), de)
        sd["crit.out_layers_biases.0"] = rnd(len(SYMBOLS))
        if not cfg["tie_weight"]:
            sd["crit.out_layers_weights.0"] = rnd(len(SYMBOLS), de)
    else:
        for i in range(3):
            dim = de // cfg["div_val"] ** i
            sd[f"word_emb.emb_layers.{i}.weight"] = rnd(bounds[i + 1] - bounds[i], dim)
            sd[f"word_emb.emb_projs.{i}"] = rnd(d, dim)
            sd[f"crit.shared_out_projs.{i}"] = sd[f"word_emb.emb_projs.{i}"]
            sd[f"crit.out_layers_biases.{i}"] = rnd(bounds[i + 1] - bounds[i])
            if not cfg["tie_projs"][i]:
                sd[f"crit.out_projs.{i}"] = rnd(d, dim)
    for l in range(2):
        p = f"layers.{l}."
        sd.update({p + "dec_attn.qkv_net.weight": rnd(3 * hd, d), p + "dec_attn.r_net.weight": rnd(hd, d),
                   p + "dec_attn.o_net.weight": rnd(d, hd), p + "dec_attn.layer_norm.weight": rnd(d, mean=1),
                   p + "dec_attn.layer_norm.bias": rnd(d), p + "pos_ff.CoreNet.0.weight": rnd(32, d),
                   p + "pos_ff.CoreNet.0.bias": rnd(32), p + "pos_ff.CoreNet.3.weight": rnd(d, 32),
                   p + "pos_ff.CoreNet.3.bias": rnd(d), p + "pos_ff.layer_norm.weight": rnd(d, mean=1),
                   p + "pos_ff.layer_norm.bias": rnd(d)})
    return cfg, sd


def nvidia_reference(cfg, sd, stream, seg):
    """Deliberately naive NVIDIA Transformer-XL scoring (loops over positions), source ids.
    stream ``[B, L]``; returns log p(stream[:, t + 1]) ``[B, L - 1]`` scored ``seg`` at a time.
    With ``same_length``, NVIDIA's mask: a query sees the keys up to ``mem_len`` positions back,
    ``mem_len + 1`` keys in all (the authors' and HuggingFace's see ``mem_len``)."""
    d, H, Dh, div_val = cfg["d_model"], cfg["n_head"], cfg["d_head"], cfg["div_val"]
    bounds = [0] + CUTOFFS + [len(SYMBOLS)]

    def cluster_of(t):
        return sum(t >= c for c in CUTOFFS)

    def embed(t):
        if div_val == 1:
            e = sd["word_emb.emb_layers.0.weight"][t]
            return e * math.sqrt(d)
        c = cluster_of(t)
        return sd[f"word_emb.emb_projs.{c}"] @ sd[f"word_emb.emb_layers.{c}.weight"][t - bounds[c]] * math.sqrt(d)

    def out_params(c):
        if div_val == 1:
            w = sd.get("crit.out_layers_weights.0", sd["word_emb.emb_layers.0.weight"])[bounds[c]:bounds[c + 1]]
            b = sd["crit.out_layers_biases.0"][bounds[c]:bounds[c + 1]]
            proj = None
        else:
            w = sd.get(f"crit.out_layers_weights.{c}", sd[f"word_emb.emb_layers.{c}.weight"])
            b = sd[f"crit.out_layers_biases.{c}"]
            proj = sd[f"word_emb.emb_projs.{c}"] if cfg["tie_projs"][c] else sd[f"crit.out_projs.{c}"]
        return w, b, proj

    def log_prob(h, t):
        w, b, proj = out_params(0)
        w = torch.cat([w, sd["crit.cluster_weight"]])
        b = torch.cat([b, sd["crit.cluster_bias"]])
        head = torch.log_softmax((h @ proj if proj is not None else h) @ w.T + b, -1)
        c = cluster_of(t)
        if c == 0:
            return head[t]
        w, b, proj = out_params(c)
        tail = torch.log_softmax((h @ proj if proj is not None else h) @ w.T + b, -1)
        return head[-c] + tail[t - bounds[c]]  # NVIDIA: tail cluster c's head entry is column -c

    def ln(x, p):
        return F.layer_norm(x, [d], sd[p + ".weight"], sd[p + ".bias"])

    def sinusoid(dist):
        dist = min(dist, cfg["clamp_len"]) if cfg["clamp_len"] > 0 else dist
        angles = dist * sd["pos_emb.inv_freq"]
        return torch.cat([angles.sin(), angles.cos()])

    out = torch.zeros(stream.size(0), stream.size(1) - 1)
    for b in range(stream.size(0)):
        mems = [torch.zeros(0, d) for _ in range(2)]
        for start in range(0, stream.size(1) - 1, seg):
            tokens = stream[b, start:min(start + seg, stream.size(1) - 1)].tolist()
            h = torch.stack([embed(t) for t in tokens])
            new_mems = []
            for l in range(2):
                p = f"layers.{l}."
                cat = torch.cat([mems[l], h])
                new_mems.append(cat[-cfg["mem_len"]:])
                x = ln(cat, p + "dec_attn.layer_norm") if cfg["pre_lnorm"] else cat
                q, k, v = (x @ sd[p + "dec_attn.qkv_net.weight"].T).chunk(3, -1)
                M = mems[l].size(0)
                attn_out = torch.zeros(len(tokens), H * Dh)
                for i in range(len(tokens)):
                    for n in range(H):
                        sl = slice(n * Dh, (n + 1) * Dh)
                        qi = q[M + i, sl]
                        scores = []
                        for j in range(M + i + 1):  # causal: keys up to the query's position
                            if cfg["same_length"] and M + i - j > cfg["mem_len"]:
                                scores.append(torch.tensor(-math.inf))
                                continue
                            r = (sd[p + "dec_attn.r_net.weight"] @ sinusoid(M + i - j))[sl]
                            scores.append(((qi + sd["r_w_bias"][n]) @ k[j, sl]
                                           + (qi + sd["r_r_bias"][n]) @ r) / math.sqrt(Dh))
                        prob = torch.softmax(torch.stack(scores), 0)
                        attn_out[i, sl] = prob @ v[: M + i + 1, sl]
                a = attn_out @ sd[p + "dec_attn.o_net.weight"].T
                if cfg["pre_lnorm"]:
                    h = h + a
                    y = ln(h, p + "pos_ff.layer_norm")
                else:
                    h = y = ln(h + a, p + "dec_attn.layer_norm")
                y = F.relu(y @ sd[p + "pos_ff.CoreNet.0.weight"].T + sd[p + "pos_ff.CoreNet.0.bias"])
                y = y @ sd[p + "pos_ff.CoreNet.3.weight"].T + sd[p + "pos_ff.CoreNet.3.bias"]
                h = h + y if cfg["pre_lnorm"] else ln(h + y, p + "pos_ff.layer_norm")
            mems = new_mems
            for i, t in enumerate(tokens):
                out[b, start + i] = log_prob(h[i], stream[b, start + i + 1].item())
    return out


def save_nvidia(path, cfg, sd):
    """As NVIDIA's train.py: a dict with args, model_config, model_state and the pickled Vocab object
    (of a module that is not importable when loading)."""
    module = types.ModuleType("utils_vocabulary_of_nvidia")
    vocab_cls = type("Vocab", (), {"__module__": module.__name__})
    module.Vocab = vocab_cls
    vocab = vocab_cls()
    vocab.idx2sym, vocab.counter = list(SYMBOLS), Counter({s: 100 - i for i, s in enumerate(SYMBOLS)})
    sys.modules[module.__name__] = module
    try:
        torch.save({"args": types.SimpleNamespace(dataset="wt103"), "model_config": cfg,
                    "model_state": sd, "vocab": vocab, "epoch": 1}, path)
    finally:
        del sys.modules[module.__name__]


def converted_log_probs(model, new_stream, seg):
    """Our model streaming ``new_stream`` ``[B, L]`` (fairseq ids) segment by segment."""
    return torch.cat(stream_segments(model, new_stream, seg, memory_key="valid"), dim=1)


def to_fairseq_ids(stream, vmap_source_id):
    new_of = {s: n for n, s in enumerate(vmap_source_id) if s >= 0}
    return stream.clone().apply_(lambda s: new_of[s])


@pytest.mark.parametrize("variant", sorted(NVIDIA_CONFIGS))
def test_nvidia_conversion_equals_naive_nvidia_reference(tmp_path, variant):
    cfg, sd = nvidia_checkpoint(variant)
    path = str(tmp_path / "checkpoint_best.pt")
    save_nvidia(path, cfg, sd)
    with pytest.raises(cc.UntrustedPickleError, match="--trust-pickle"):
        cc.read_nvidia(path)
    model, _ = cc.convert(cc.read_nvidia(path, trust_pickle=True), str(tmp_path / "out"))
    model.eval()
    assert model.decoder.memory_options.same_length_mask == "nvidia"
    torch.manual_seed(3)
    stream = torch.randint(0, len(SYMBOLS), (2, 17))
    reference = nvidia_reference(cfg, sd, stream, seg=6)
    assert reference.std() > 1.0  # far from uniform
    vmap = cc.map_vocabulary(SYMBOLS, CUTOFFS)
    got = converted_log_probs(model, to_fairseq_ids(stream, vmap.source_id), seg=6)
    assert torch.allclose(got, reference, atol=1e-5, rtol=1e-5), (got - reference).abs().max()
    with open(tmp_path / "out" / "dict.txt") as f:
        assert [line.split()[0] for line in f] == vmap.words


def test_convert_cli_then_fairseq_eval_lm_scores_like_the_source(tmp_path):
    """With NVIDIA's same_length on (as its WT103 evaluation runs), through the real entry points."""
    cfg, sd = nvidia_checkpoint("div_val2_tied_same_length", seed=1)
    src = str(tmp_path / "nvidia.pt")
    save_nvidia(src, cfg, sd)
    out = str(tmp_path / "converted")
    proc = subprocess.run([sys.executable, "-m", "truncated_bptt.convert_cli", "nvidia", src, out,
                           "--trust-pickle", "--tokens-per-sample", "6"], cwd=ROOT, env=cli_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    lines = ["the w10 , w30 w45 .", "w5 <unk> w20 w49", "w8 w9 w12 w40 w41 , the ."]
    binarize(out, out, "test", lines)
    log = run("fairseq-eval-lm", out, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm",
              "--path", os.path.join(out, "model.pt"), "--gen-subset", "test", "--batch-size", "1",
              "--tokens-per-sample", "6", "--cpu")
    loss = parse_eval_lm(log)["loss"]
    # The source reads the same text as fairseq: "<eos>" then each line followed by "<eos>".
    words = ["<eos>"] + [w for line in lines for w in line.split() + ["<eos>"]]
    stream = torch.tensor([[SYMBOLS.index(w) for w in words]])
    reference = -nvidia_reference(cfg, sd, stream, seg=6).mean().item() / math.log(2)
    assert abs(loss - reference) < 1e-3, (loss, reference)


# ----------------------------------------------------------------------------- HuggingFace
# These need transformers (the `transformers` fixture, conftest.py): scripts/test.sh runs them in
# .venv/bench-example, where a missing transformers fails instead of skipping.
HF_CONFIGS = {
    "div_val1_same_length_untie_r": dict(d_embed=16, div_val=1, same_length=True, untie_r=True,
                                         clamp_len=4, pre_lnorm=False),
    "div_val2_pre_norm_shared_r": dict(d_embed=12, div_val=2, same_length=False, untie_r=False,
                                       clamp_len=-1, pre_lnorm=True),
}


def random_transformers_model(transformers, vocab_size, **options):
    """A ``TransfoXLLMHeadModel`` of the tests' size with large random weights (far from uniform)."""
    torch.manual_seed(0)
    config = transformers.TransfoXLConfig(
        vocab_size=vocab_size, cutoffs=list(CUTOFFS), d_model=16, n_head=2, d_head=8,
        d_inner=32, n_layer=2, mem_len=5, dropout=0.0, dropatt=0.0, **options)
    hf = transformers.TransfoXLLMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.normal_(1.0 if "layer_norm.weight" in name else 0.0, 0.5)
    return hf


def transformers_log_probs(hf, stream, seg):
    """transformers' own scores of ``stream`` ``[B, L]`` (its ids), ``seg`` tokens at a time:
    log p(stream[:, t + 1]) ``[B, L - 1]``. Empty memory at the start, as the authors, NVIDIA and
    fairseq-eval-lm (transformers' default, ``mems=None``, would start from mem_len zero vectors)."""
    bsz, n_targets = stream.size(0), stream.size(1) - 1
    reference, mems = [], [torch.zeros(0, bsz, hf.config.d_model) for _ in range(hf.config.n_layer)]
    with torch.no_grad():
        for start in range(0, n_targets, seg):
            tokens = stream[:, start:min(start + seg, n_targets)]
            out = hf(input_ids=tokens, mems=mems)
            mems = out.mems
            targets = stream[:, start + 1:start + 1 + tokens.size(1)]
            reference.append(out.prediction_scores.gather(2, targets.unsqueeze(2)).squeeze(2))
    return torch.cat(reference, dim=1)


@pytest.mark.parametrize("variant", sorted(HF_CONFIGS))
def test_huggingface_conversion_equals_transformers_model(tmp_path, variant, transformers):
    hf = random_transformers_model(transformers, len(SYMBOLS), **HF_CONFIGS[variant])
    hf.save_pretrained(str(tmp_path / "hf"))
    with open(tmp_path / "hf" / "vocab.pkl", "wb") as f:  # the tokenizer's save_vocabulary layout
        pickle.dump({"idx2sym": list(SYMBOLS), "sym2idx": {s: i for i, s in enumerate(SYMBOLS)},
                     "counter": Counter({s: 100 - i for i, s in enumerate(SYMBOLS)})}, f)
    with pytest.raises(cc.UntrustedPickleError, match="--trust-pickle"):
        cc.read_huggingface(str(tmp_path / "hf"))
    model, _ = cc.convert(cc.read_huggingface(str(tmp_path / "hf"), trust_pickle=True),
                          str(tmp_path / "out"))
    model.eval()
    assert model.decoder.memory_options.same_length_mask == "authors"

    torch.manual_seed(3)
    stream = torch.randint(0, len(SYMBOLS), (2, 17))
    reference = transformers_log_probs(hf, stream, seg=6)
    assert reference.std() > 1.0
    vmap = cc.map_vocabulary(SYMBOLS, CUTOFFS)
    got = converted_log_probs(model, to_fairseq_ids(stream, vmap.source_id), seg=6)
    assert torch.allclose(got, reference, atol=1e-5, rtol=1e-5), (got - reference).abs().max()


def test_huggingface_state_over_a_fairseq_dictionary_converts_with_ids_unchanged(tmp_path, transformers):
    """fairseq's examples/truncated_bptt wraps a TransfoXLLMHeadModel built on the fairseq
    dictionary: its state dict (transformers' own names, tied copies and cluster order) maps onto
    ours id for id, and the result scores as transformers' model."""
    from truncated_bptt.fairseq_checkpoint import build_model

    symbols = ["<s>", "<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(4, len(SYMBOLS))]
    hf = random_transformers_model(transformers, len(symbols), d_embed=12, div_val=2,
                                   untie_r=True, pre_lnorm=False, clamp_len=-1)
    with pytest.raises(ValueError, match="not fairseq's <s> <pad> </s> <unk>"):
        cc.fairseq_vocabulary(SYMBOLS, CUTOFFS)
    vmap = cc.fairseq_vocabulary(symbols, CUTOFFS)
    assert vmap.source_id == list(range(len(symbols))) and vmap.cutoffs == CUTOFFS
    source = cc.huggingface_source(hf.state_dict(), hf.config.to_dict(), symbols)
    state, opts = cc.fairseq_state(source, vmap)
    assert not opts["tie_r"] and not opts["untie_weight"] and not opts["untie_projs"]

    with open(tmp_path / "dict.txt", "w") as f:
        f.writelines(f"{w} {c}\n" for w, c in zip(vmap.words, vmap.counts))
    model, _, _ = build_model(str(tmp_path), cc.model_arguments(opts, len(symbols)),
                              task_args=["--tokens-per-sample", "6"])
    model.load_state_dict(state, strict=True)
    torch.manual_seed(4)
    # no <pad> (id 1): it is never a target; every cluster's words, so its head column is read
    stream = torch.randint(2, len(symbols), (2, 17))
    targets = stream[:, 1:]
    assert all(((targets >= lo) & (targets < hi)).any() for lo, hi in ((0, 20), (20, 35), (35, 50)))
    reference = transformers_log_probs(hf, stream, seg=6)
    assert reference.std() > 1.0
    got = converted_log_probs(model, stream, seg=6)
    assert torch.allclose(got, reference, atol=1e-5, rtol=1e-5), (got - reference).abs().max()
