"""TransformerXLDecoder: parameter counts, memory semantics, generation, precision, checkpointing."""
import argparse
import logging

import pytest
import torch

from inference_models import dictionary, small_decoder, tokens
from truncated_bptt import packed_weights, transformer_xl_model as txl
from truncated_bptt.memory import XLMemory
from truncated_bptt.transformer_xl_model import TransformerXLConfig, TransformerXLDecoder


def preset_config(preset, **extra):
    args = argparse.Namespace(**extra)
    preset(args)
    return TransformerXLConfig(tokens_per_sample=64, **vars(args))


def count_on_meta(cfg, n_symbols):
    with torch.device("meta"):
        model = TransformerXLDecoder(cfg, dictionary(n_symbols))
    return sum(p.numel() for p in model.parameters())


def expected_parameters(cfg, n_token):
    """The originals' parameter count, written out from their module list."""
    d, hd = cfg.d_model, cfg.n_head * cfg.d_head
    d_embed = cfg.d_embed if cfg.d_embed > 0 else d
    per_layer = d * 3 * hd + d * hd + hd * d + 2 * d  # qkv, r_net, o_net, LayerNorm
    per_layer += d * cfg.d_inner + cfg.d_inner + cfg.d_inner * d + d + 2 * d  # feed-forward
    uv = 2 * cfg.n_head * cfg.d_head
    total = cfg.n_layer * (per_layer + (0 if cfg.tie_r else uv)) + (uv if cfg.tie_r else 0)
    cutoffs = [c for c in cfg.cutoffs if c < n_token]
    bounds = [0] + cutoffs + [n_token]
    n_clusters = len(cutoffs)
    total += n_clusters * d_embed + n_clusters  # cluster weight and bias of the head
    if cfg.div_val == 1:
        total += n_token * d_embed + n_token  # tied table + output bias
        if d != d_embed:
            total += 2 * d * d_embed  # input projection (shared by the tails) + the head's own
    else:
        for i in range(n_clusters + 1):
            d_i = d_embed // cfg.div_val ** i
            size = bounds[i + 1] - bounds[i]
            total += size * d_i + size + d * d_i  # tied table, output bias, tied projection
        total += d * d_embed  # the head's output projection is not tied
    return total


WT103_SYMBOLS = 267744


def test_paper_base_has_the_example_parameter_count():
    """fairseq's example logs 151,123,537 parameters for this model on WikiText-103."""
    cfg = preset_config(txl.transformer_xl_paper_base)
    assert count_on_meta(cfg, WT103_SYMBOLS) == 151_123_537
    # the example's README command line (plain --arch transformer_xl with these sizes) as well
    plain = TransformerXLConfig(n_layer=16, d_model=410, n_head=10, d_head=41, d_inner=2100,
                                dropout=0.1, mem_len=150, tokens_per_sample=150)
    assert count_on_meta(plain, WT103_SYMBOLS) == 151_123_537


@pytest.mark.parametrize("preset,n_symbols", [
    (txl.transformer_xl_wt103_base, WT103_SYMBOLS),
    (txl.transformer_xl_wt103_large, WT103_SYMBOLS),
    (txl.transformer_xl_tiny, 33282),
    (txl.transformer_xl_tiny, 600),  # cutoffs clipped to the vocabulary
])
def test_preset_parameter_counts(preset, n_symbols):
    cfg = preset_config(preset)
    assert count_on_meta(cfg, n_symbols) == expected_parameters(cfg, n_symbols)


def test_presets_have_the_published_shapes():
    base = preset_config(txl.transformer_xl_wt103_base)
    assert (base.n_layer, base.d_model, base.n_head, base.d_head, base.d_inner, base.dropout) == \
        (16, 512, 8, 64, 2048, 0.1)
    large = preset_config(txl.transformer_xl_wt103_large)
    assert (large.n_layer, large.d_model, large.n_head, large.d_head, large.d_inner, large.div_val,
            large.dropout, large.dropatt) == (18, 1024, 16, 64, 4096, 4, 0.2, 0.2)
    # a command-line value wins over the preset's
    assert preset_config(txl.transformer_xl_wt103_base, n_layer=3).n_layer == 3


def test_projection_tying_and_init():
    dec = small_decoder(div_val=2, d_embed=16)
    sm, emb = dec.softmax, dec.embed
    assert sm.out_projs[1] is emb.emb_projs[1] and sm.out_projs[2] is emb.emb_projs[2]
    assert sm.out_projs[0] is not emb.emb_projs[0]
    assert all(o.weight is e.weight for o, e in zip(sm.out_layers, emb.emb_layers))
    big = small_decoder(n_symbols=200, d_model=256, d_head=128, init_std=0.02, proj_init_std=0.01,
                        div_val=2, d_embed=256)
    ln = big.layers[0].attn.layer_norm.weight
    assert abs(ln.mean().item() - 1.0) < 0.01 and 0.01 < ln.std().item() < 0.03
    assert 0.015 < big.layers[0].ff.fc1.weight.std().item() < 0.025
    assert 0.007 < big.embed.emb_projs[0].std().item() < 0.013
    assert big.layers[0].ff.fc1.bias.abs().max().item() == 0.0


def test_bad_configuration_raises_one_clear_line():
    with pytest.raises(ValueError, match="--cutoffs must be positive and strictly increasing"):
        small_decoder(cutoffs=[30, 10])
    with pytest.raises(ValueError, match="same_length needs mem_len > 0"):
        small_decoder(mem_len=0, same_length=True)
    with pytest.raises(ValueError, match="--div-val"):
        small_decoder(div_val=64, cutoffs=[10, 30])


def test_two_segments_with_memory_equal_one_long_segment():
    dec = small_decoder(mem_len=8, clamp_len=-1).eval()
    x = tokens(3, 12)
    with torch.no_grad():
        full, _ = dec(x)  # one segment, no memory
        first, _ = dec(x[:, :8], memory_key="valid", segment_index=0)
        second, _ = dec(x[:, 8:], memory_key="valid", segment_index=1)
    torch.testing.assert_close(first, full[:, :8], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, full[:, 8:], rtol=1e-5, atol=1e-5)
    memory = dec.get_stream_memory("valid")
    assert len(memory.hiddens) == 2 and memory.hiddens[0].shape == (3, 8, 16)
    # segment 0 starts afresh: the memory of the previous pass is not used
    with torch.no_grad():
        again, _ = dec(x[:, :8], memory_key="valid", segment_index=0)
    torch.testing.assert_close(again, first)


def test_forward_segment_is_the_whole_network():
    """forward_segment over explicit memory, with and without an inference cache, equals the
    streaming entry point."""
    dec = small_decoder(mem_len=6, same_length=True, clamp_len=4).eval()
    x = tokens(2, 15)
    segments = x.split(5, dim=1)
    with torch.no_grad():
        memory, plain = None, []
        for seg in segments:
            out, memory = dec.forward_segment(seg, memory)
            plain.append(out)
        streamed = [dec(seg, memory_key="k", segment_index=i)[0] for i, seg in enumerate(segments)]
    assert memory.length == 6 and memory.keys_values is None  # no cache: nothing cached
    for a, b in zip(plain, streamed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert dec.get_stream_memory("k").keys_values is not None  # the pass cached them


def test_the_model_refuses_batches_without_a_memory_key():
    model = txl.TransformerXLLanguageModel(small_decoder())
    with pytest.raises(ValueError, match="add --task truncated_bptt_lm"):
        model(tokens(1, 4), src_lengths=torch.tensor([4]))
    out, _ = model(tokens(1, 4), memory_key=None)  # explicitly stateless
    assert out.shape == (1, 4, 16)


def optimizer_step_through_p_data(decoder, factor=1.1):
    """Change the weights as fairseq's optimizers do: through p.data, which bumps no version."""
    with torch.no_grad():
        for p in decoder.parameters():
            p.data.mul_(factor)


def validation_pass(decoder, segments, key="valid"):
    """Features of a pass over ``segments`` as fairseq-train's validation runs it."""
    decoder.eval()
    with torch.no_grad():
        return [decoder(seg, memory_key=key, segment_index=i)[0] for i, seg in enumerate(segments)]


def test_weights_changed_through_p_data_are_never_scored_with_stale_caches():
    """Validate, update the weights exactly as fairseq's optimizers do (p.data, no version bump;
    fairseq's trainer then calls set_num_updates), validate again: the second pass equals a fresh
    model with the new weights."""
    dec = small_decoder(mem_len=8, clamp_len=5)
    segments = tokens(2, 24).split(6, dim=1)
    validation_pass(dec, segments)
    optimizer_step_through_p_data(dec)
    dec.set_num_updates(1)
    second = validation_pass(dec, segments)
    fresh = small_decoder(mem_len=8, clamp_len=5)
    fresh.load_state_dict(dec.state_dict())
    for got, want in zip(second, validation_pass(fresh, segments)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("invalidate", ["set_num_updates", "train", "load_state_dict"])
def test_every_weight_change_point_ends_the_pass_cache(invalidate):
    """Mid-pass: a weight change signalled by any of fairseq's hooks stops the cached keys/values
    and position keys from being used; the next segment is scored with the new weights."""
    dec = small_decoder(mem_len=8).eval()
    x = tokens(2, 12)
    with torch.no_grad():
        dec(x[:, :6], memory_key="valid", segment_index=0)
        memory = dec.get_stream_memory("valid")
        optimizer_step_through_p_data(dec)
        if invalidate == "set_num_updates":
            dec.set_num_updates(7)
        elif invalidate == "train":
            dec.train()
            dec.eval()
        else:
            dec.load_state_dict(dec.state_dict())
        cached, _ = dec(x[:, 6:], memory_key="valid", segment_index=1)
        recomputed, _ = dec.forward_segment(x[:, 6:], XLMemory(memory.hiddens))
    torch.testing.assert_close(cached, recomputed, rtol=0, atol=0)


def test_without_a_weight_change_signal_the_cache_is_kept():
    """The cache's lifetime is explicit: inside one pass it is used (this is what makes it pay)."""
    dec = small_decoder(mem_len=8).eval()
    x = tokens(2, 12)
    with torch.no_grad():
        dec(x[:, :6], memory_key="valid", segment_index=0)
        cache = dec._stream_caches["valid"]
        dec(x[:, 6:], memory_key="valid", segment_index=1)
        assert dec._stream_caches["valid"] is cache
        assert dec.get_stream_memory("valid").pass_serial == cache.serial


def test_clamp_len_and_same_length_change_what_memory_contributes():
    dec = small_decoder(mem_len=8).eval()
    x = tokens(2, 12)

    def second_segment():
        dec(x[:, :8], memory_key="k", segment_index=0)
        return dec(x[:, 8:], memory_key="k", segment_index=1)[0]

    with torch.no_grad():
        plain = second_segment()
        dec.set_memory_options(clamp_len=2)
        clamped = second_segment()
        dec.set_memory_options(clamp_len=-1, same_length=True)
        same = second_segment()
        full, _ = dec(x)
    assert not torch.allclose(plain, clamped) and not torch.allclose(plain, same)
    # same_length: query 8+i sees positions 1+i .. 8+i, in both ways of running
    torch.testing.assert_close(same, full[:, 8:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="same_length needs mem_len > 0"):
        dec.set_memory_options(mem_len=0)


def test_same_length_mask_reaches_the_cached_and_the_uncached_path():
    """NVIDIA's same_length mask (one key more per query than the authors') in an evaluation pass
    with its inference cache, in forward_segment without one (as training), and after
    set_memory_options (which must not reuse a cached mask of the other variant)."""
    dec = small_decoder(mem_len=6, same_length=True, same_length_mask="nvidia").eval()
    assert dec.memory_options.same_length_mask == "nvidia"
    segments = tokens(2, 15).split(5, dim=1)

    def both_paths():
        cached = validation_pass(dec, segments)
        memory, uncached = None, []
        with torch.no_grad():
            for seg in segments:
                out, memory = dec.forward_segment(seg, memory)
                uncached.append(out)
        for a, b in zip(cached, uncached):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        return torch.cat(cached, dim=1)

    nvidia = both_paths()
    dec.set_memory_options(same_length_mask="authors")
    authors = both_paths()
    # the first segment is the same (no query has keys that far back); later ones differ
    torch.testing.assert_close(nvidia[:, :5], authors[:, :5])
    assert not torch.allclose(nvidia[:, 5:], authors[:, 5:], atol=1e-3)
    with pytest.raises(ValueError, match="same_length_mask must be 'authors' or 'nvidia', got 'nvidea'"):
        dec.set_memory_options(same_length_mask="nvidea")
    with pytest.raises(ValueError, match="same_length_mask must be 'authors' or 'nvidia'"):
        small_decoder(mem_len=6, same_length_mask="NVIDIA")


def test_memory_options_are_validated_once_with_one_clear_line():
    with pytest.raises(ValueError, match="mem_len must be an integer, got '640'"):
        small_decoder(mem_len="640")
    with pytest.raises(ValueError, match="same_length must be True or False"):
        small_decoder(same_length=1)
    dec = small_decoder(mem_len=4, clamp_len=3)
    assert (dec.memory_options.mem_len, dec.memory_options.clamp_len) == (4, 3)


def test_sdpa_attention_model_equals_the_reference_model():
    """--attention sdpa: training gradients, an evaluation pass with its cache and generation give
    the reference attention's results (fp32, 1e-5)."""
    models = [small_decoder(attention=impl, mem_len=6, same_length=True, clamp_len=5)
              for impl in ("reference", "sdpa")]
    assert [m.layers[0].attn.implementation for m in models] == ["reference", "sdpa"]
    x, y = tokens(2, 16), tokens(2, 16, seed=1)
    for i, (seg, tgt) in enumerate(zip(x.split(4, 1), y.split(4, 1))):
        outs = [m(seg, memory_key="train", segment_index=i)[0] for m in models]
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
        for m, out in zip(models, outs):
            m.target_log_probs(out, tgt).sum().backward()
    for a, b in zip(*(m.parameters() for m in models)):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        evaluated = [validation_pass(m, x.split(5, 1)) for m in models]
        generated = []
        for m in models:
            state = {}
            generated.append([m(x[:, :t], incremental_state=state)[0] for t in range(1, 9)])
    for got, want in zip(evaluated[1] + generated[1], evaluated[0] + generated[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [
    {"mem_len": 6, "same_length": True, "clamp_len": 3},  # distinct clamped distances
    {"mem_len": 6, "same_length": True, "same_length_mask": "nvidia"},
    {"mem_len": 5},
])
def test_inference_passes_attend_by_the_position_index(options, monkeypatch):
    """An evaluation pass and a generation with --attention auto on CPU in fp32 run every layer
    through indexed_relative_attention (counted, so a fallback cannot pass) and give what the same
    weights give with --attention reference; a bf16 pass builds no index (its scores are
    normalised in fp32 by the reference kernel). The cached position keys are stored transposed."""
    from truncated_bptt import relative_attention

    calls = []
    kernel = relative_attention.indexed_relative_attention
    monkeypatch.setattr(relative_attention, "indexed_relative_attention",
                        lambda *args: calls.append(1) or kernel(*args))
    models = [small_decoder(attention=impl, **options).eval() for impl in ("auto", "reference")]
    x = tokens(2, 20)
    results, counts = [], []
    with torch.no_grad():
        for m in models:
            passed = validation_pass(m, x.split(4, 1))
            state = {}
            generated = [m(x[:, :t], incremental_state=state)[0] for t in range(1, 8)]
            results.append(passed + generated)
            counts.append(len(calls))
    n_layer = len(models[0].layers)
    assert counts == [n_layer * (5 + 7)] * 2  # 5 segments and 7 generation steps; none by reference
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    cache = next(iter(models[0]._stream_caches.values()))
    for keys in next(iter(cache._position_keys.values())):
        assert keys.t().is_contiguous()  # [n_head * d_head, K + 1] in memory
    validation_pass(models[0].bfloat16(), x.split(4, 1))
    assert len(calls) == n_layer * (5 + 7)


def test_no_gradient_reaches_memory():
    dec = small_decoder(mem_len=8, untie_weight=True)
    first = torch.full((2, 8), 40)  # token 40 appears only in the first segment
    second = tokens(2, 8, n_symbols=30)
    dec(first, memory_key="train", segment_index=0)
    memory = dec.get_stream_memory("train")
    assert all(not h.requires_grad for h in memory.hiddens)
    out, _ = dec(second, memory_key="train", segment_index=1)
    dec.target_log_probs(out, tokens(2, 8, n_symbols=30, seed=1)).sum().backward()
    grad = dec.embed.emb_layers[0].weight.grad
    assert grad[40].abs().max() == 0.0  # no path from the second segment's loss into the first
    assert grad[second[0, 0]].abs().max() > 0.0


def test_training_uses_no_cache():
    dec = small_decoder(mem_len=8)
    x = tokens(2, 12)
    dec(x[:, :6], memory_key="train", segment_index=0)
    dec(x[:, 6:], memory_key="train", segment_index=1)
    assert dec._stream_caches == {} and dec.get_stream_memory("train").keys_values is None


def test_stream_memory_api_and_warnings(caplog):
    dec = small_decoder(mem_len=4).eval()
    x = tokens(2, 6)
    with caplog.at_level(logging.WARNING):
        dec(x, memory_key="train", segment_index=3)
    assert "has no memory" in caplog.text
    memory = dec.get_stream_memory("train")
    assert [h.shape for h in memory.hiddens] == [(2, 4, 16)] * 2
    dec.set_stream_memory("valid", XLMemory([h * 0 for h in memory.hiddens]))
    assert dec.get_stream_memory("valid").hiddens[0].abs().max() == 0
    dec.reset_stream_memory("valid")
    assert dec.get_stream_memory("valid") is None and dec.get_stream_memory("train") is not None
    with pytest.raises(ValueError, match="memory for 2 streams but the batch has 3 rows"):
        dec(tokens(3, 6), memory_key="train", segment_index=1)
    with pytest.raises(ValueError, match="memory of 1 layers given to a model of 2 layers"):
        dec.set_stream_memory("x", XLMemory(memory.hiddens[:1]))
    dec.reset_stream_memory()
    assert dec.get_stream_memory("train") is None


def test_incremental_decoding_equals_full_forward():
    dec = small_decoder(mem_len=16).eval()
    x = tokens(3, 10)
    with torch.no_grad():
        full = dec.get_normalized_probs(dec(x), log_probs=True)
        state = {}
        for t in range(1, 11):
            out = dec(x[:, :t], incremental_state=state)
            assert out[0].shape == (3, 1, 16)  # one step over the cached memory
            step = dec.get_normalized_probs(out, log_probs=True)
            torch.testing.assert_close(step[:, 0], full[:, t - 1], rtol=1e-5, atol=1e-5)


def test_get_normalized_probs_with_a_target_is_the_target_log_prob_broadcast():
    dec = small_decoder().eval()
    x, y = tokens(2, 5), tokens(2, 5, seed=1)
    with torch.no_grad():
        out = dec(x)
        broadcast = dec.get_normalized_probs(out, log_probs=True, sample={"target": y})
        full = dec.get_normalized_probs(out, log_probs=True)
    assert broadcast.shape == full.shape == (2, 5, 50)
    at_target = broadcast.gather(2, y.unsqueeze(-1)).squeeze(-1)  # what fairseq's scorer reads
    torch.testing.assert_close(at_target, full.gather(2, y.unsqueeze(-1)).squeeze(-1))
    assert broadcast.stride(-1) == 0  # no B x T x V tensor was built


def test_reorder_incremental_state_reorders_memory():
    dec = small_decoder().eval()
    x = tokens(3, 5)
    state = {}
    with torch.no_grad():
        dec(x[:, :4], incremental_state=state)
        memory = dec.generation_memory(state)
        before = [t.clone() for t in memory.hiddens + memory.keys_values]
        assert len(before) == 4  # hidden memory and cached keys/values of both layers
        order = torch.tensor([2, 2, 0])
        dec.reorder_incremental_state_scripting(state, order)
        memory = dec.generation_memory(state)
        for b, a in zip(before, memory.hiddens + memory.keys_values):
            torch.testing.assert_close(a, b[order])
        step, _ = dec(x[order], incremental_state=state)
        reference, _ = dec(x[order])
    torch.testing.assert_close(step[:, -1], reference[:, -1], rtol=1e-5, atol=1e-5)


def test_sampling_with_a_prefix_through_fairseq_sequence_generator():
    from fairseq import search
    from fairseq.sequence_generator import SequenceGenerator

    dec = small_decoder().eval()
    model = txl.TransformerXLLanguageModel(dec)
    calls = []
    original = dec.forward_segment

    def counting(tok, memory=None, cache=None):
        calls.append(tok.size(1))
        return original(tok, memory, cache)

    dec.forward_segment = counting
    gen = SequenceGenerator([model], dec.dictionary, beam_size=2, max_len_b=6,
                            search_strategy=search.Sampling(dec.dictionary, sampling_topk=5))
    prefix = tokens(1, 3)
    # as fairseq's language_modeling task builds it for generation: the prompt is the source and
    # the forced prefix
    sample = {"net_input": {"src_tokens": prefix, "src_lengths": torch.tensor([3])}}
    torch.manual_seed(0)
    hypos = gen.generate([model], sample, prefix_tokens=prefix)
    assert len(hypos[0]) == 2
    assert torch.equal(hypos[0][0]["tokens"][:3], prefix[0])
    assert len(hypos[0][0]["tokens"]) > 3  # sampled beyond the prefix
    assert set(calls) == {1}  # every step feeds only the newest token


@pytest.mark.parametrize("dtype,tolerance", [(torch.bfloat16, 0.03), (torch.float16, 0.002)])
def test_half_precision_scores_close_to_fp32(dtype, tolerance):
    """Streaming two segments in half precision gives the fp32 log-probs within ``tolerance`` nats
    (measured: 0.009 for bf16's 8-bit mantissa, 0.0006 for fp16's 11 bits) on a model far from
    uniform (log-probs spread by about 1.3 nats); memory stays in the model's dtype."""
    x, y = tokens(2, 8), tokens(2, 8, seed=1)
    scores = {}
    for kind in (torch.float32, dtype):
        dec = small_decoder()
        with torch.no_grad():
            for p in dec.parameters():
                p.normal_(0.0, 0.3)
        dec = dec.to(kind).eval()
        with torch.no_grad():
            dec(x, memory_key="valid", segment_index=0)
            out, _ = dec(x, memory_key="valid", segment_index=1)
            scores[kind] = dec.target_log_probs(out, y)
        assert dec.get_stream_memory("valid").hiddens[0].dtype == kind
    assert scores[dtype].dtype == torch.float32 and scores[torch.float32].std() > 1.0
    assert (scores[dtype] - scores[torch.float32]).abs().max() < tolerance


@pytest.mark.parametrize("flag", ["checkpoint_activations", "offload_activations"])
def test_activation_checkpointing_gives_the_same_gradients(flag):
    x, y = tokens(2, 8), tokens(2, 8, seed=1)
    grads = []
    for enabled in (False, True):
        dec = small_decoder(dropout=0.0, **{flag: enabled})
        dec(x, memory_key="train", segment_index=0)
        out, _ = dec(x, memory_key="train", segment_index=1)
        dec.target_log_probs(out, y).sum().backward()
        grads.append([p.grad for p in dec.parameters()])
        assert dec.get_stream_memory("train").keys_values is None
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_cli_train_with_checkpointed_activations_then_eval_lm_with_overrides(tmp_path,
                                                                              cycle_corpus):
    """The preset through fairseq-train (activation checkpointing + offloading) and fairseq-eval-lm
    with the example's --model-overrides."""
    from examples.fairseq_logs import parse_eval_lm
    from fairseq_commands import USER_DIR, run

    data = cycle_corpus(str(tmp_path), {"train": (40, 0), "valid": (8, 0)})
    log = run(
        "fairseq-train", data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm",
        "--arch", "transformer_xl_tiny", "--tokens-per-sample", 8, "--batch-size", 2,
        "--d-model", 16, "--d-head", 8, "--d-inner", 32, "--cutoffs", "8",
        "--checkpoint-activations", "--offload-activations", "--optimizer", "adam", "--lr", 0.001,
        "--max-update", 3, "--save-dir", tmp_path / "ckpt", "--no-epoch-checkpoints", "--cpu",
        cwd=tmp_path,
    )
    assert "num. shared model params" in log or "num. model params" in log, log[-2000:]
    overrides = '{"mem_len":64,"clamp_len":4,"same_length":True}'
    out = run(
        "fairseq-eval-lm", data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm",
        "--path", tmp_path / "ckpt" / "checkpoint_last.pt", "--gen-subset", "valid",
        "--batch-size", 1, "--required-batch-size-multiple", 1, "--tokens-per-sample", 4,
        "--model-overrides", overrides, "--cpu", cwd=tmp_path,
    )
    assert parse_eval_lm(out)["tokens"] > 0, out[-2000:]
    # the way fairseq-eval-lm loads the model: the overrides reach the decoder's config
    from fairseq import checkpoint_utils

    models, _ = checkpoint_utils.load_model_ensemble(
        [str(tmp_path / "ckpt" / "checkpoint_last.pt")],
        arg_overrides={"mem_len": 64, "clamp_len": 4, "same_length": True},
    )
    cfg = models[0].decoder.cfg
    assert (cfg.mem_len, cfg.clamp_len, cfg.same_length) == (64, 4, True)


def test_zero_initial_memory_starts_streams_like_huggingface():
    """--zero-initial-memory: segment 0 attends to mem_len zero vectors (HuggingFace's TransfoXL);
    by default it starts with empty memory (the authors, NVIDIA)."""
    seg = tokens(2, 6)
    with torch.no_grad():
        plain = small_decoder().eval()
        zero = small_decoder(zero_initial_memory=True).eval()
        empty_out, _ = plain(seg, memory_key="valid", segment_index=0)
        zero_out, _ = zero(seg, memory_key="valid", segment_index=0)
        explicit, _ = plain.forward_segment(seg, XLMemory([torch.zeros(2, 16, 16)] * 2))
    torch.testing.assert_close(zero_out, explicit)
    torch.testing.assert_close(empty_out, plain.forward_segment(seg)[0])
    assert not torch.allclose(zero_out, empty_out)
    assert zero.get_stream_memory("valid").length == 16  # 10 zeros + 6 new positions


def scores_of_a_pass(decoder, x, key="valid"):
    """log p(next token) of the segments of ``x`` (halves) in one inference pass."""
    decoder.eval()
    with torch.no_grad():
        out = []
        for i, (src, tgt) in enumerate([(x[:, :6], x[:, 1:7]), (x[:, 6:12], x[:, 7:13])]):
            features, _ = decoder(src, memory_key=key, segment_index=i)
            out.append(decoder.target_log_probs(features, tgt))
        return out


def test_inference_scores_through_packed_softmax_weights_equal_the_plain_ones():
    """Without autograd on CPU the softmax runs on oneDNN-packed weights (packed_weights.py), made
    once per cache epoch; the scores are those of the plain weights (with autograd)."""
    dec = small_decoder(mem_len=8)
    x = tokens(2, 13)
    packed_scores = scores_of_a_pass(dec, x)
    packed = dec._packed_softmax
    assert packed is not None and packed.clusters[0][0].is_mkldnn  # the packed path ran
    scores_of_a_pass(dec, x)
    assert dec._packed_softmax is packed  # same weights: packed once
    dec.eval()
    for i, (src, tgt) in enumerate([(x[:, :6], x[:, 1:7]), (x[:, 6:12], x[:, 7:13])]):
        features, _ = dec(src, memory_key="grad", segment_index=i)  # autograd on: plain weights
        torch.testing.assert_close(packed_scores[i], dec.target_log_probs(features, tgt).detach(),
                                   rtol=1e-5, atol=1e-5)
    assert dec._packed_softmax is packed


@pytest.mark.parametrize("max_rows,tails_packed", [(12, True), (11, False)])
def test_the_first_call_of_an_epoch_decides_whether_the_tail_clusters_are_packed(
        monkeypatch, max_rows, tails_packed):
    """The head's weights are always packed; the tail clusters' only when the cache epoch's first
    softmax call has at most PACK_TAILS_MAX_ROWS rows (here 2 x 6 = 12), else they are served by
    the plain weights. The scores are the plain weights' either way."""
    monkeypatch.setattr(packed_weights, "PACK_TAILS_MAX_ROWS", max_rows)
    packed_rows = []
    real = packed_weights.packed_linear
    monkeypatch.setattr(packed_weights, "packed_linear",
                        lambda x, w, b: packed_rows.append(x.size(0)) or real(x, w, b))
    dec = small_decoder(mem_len=8)
    assert dec.softmax.n_clusters == 2
    x = tokens(2, 13)
    scores = scores_of_a_pass(dec, x)
    packed = dec._packed_softmax
    assert packed.clusters[0][0].is_mkldnn and packed.tails_packed == tails_packed
    assert [w.is_mkldnn for w, _, _ in packed.clusters[1:]] == [tails_packed] * 2
    # the head's product for all 12 rows of each call; the tails' only where they are packed
    assert packed_rows.count(12) == 2
    assert (len(packed_rows) > 2) == tails_packed, packed_rows
    table = dec.softmax.out_layers[0].weight
    if not tails_packed:  # no copy: the tails are the parameter's own rows
        assert all(w.untyped_storage().data_ptr() == table.untyped_storage().data_ptr()
                   for w, _, _ in packed.clusters[1:])
    for i, (src, tgt) in enumerate([(x[:, :6], x[:, 1:7]), (x[:, 6:12], x[:, 7:13])]):
        features, _ = dec(src, memory_key="grad", segment_index=i)  # autograd on: plain weights
        torch.testing.assert_close(scores[i], dec.target_log_probs(features, tgt).detach(),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("invalidate", ["set_num_updates", "train", "load_state_dict", "to"])
def test_every_weight_change_point_drops_the_packed_softmax(invalidate):
    """Weights changed through p.data (as fairseq's optimizers do) and signalled by any hook are
    scored with the new weights: the packed copy is dropped, never reused."""
    dec = small_decoder(mem_len=8)
    x = tokens(2, 13)
    scores_of_a_pass(dec, x)
    optimizer_step_through_p_data(dec)
    if invalidate == "set_num_updates":
        dec.set_num_updates(7)
    elif invalidate == "train":
        dec.train()
    elif invalidate == "load_state_dict":
        dec.load_state_dict(dec.state_dict())
    else:
        dec.to(torch.float32)
    assert dec._packed_softmax is None
    fresh = small_decoder(mem_len=8)
    fresh.load_state_dict(dec.state_dict())
    for got, want in zip(scores_of_a_pass(dec, x), scores_of_a_pass(fresh, x)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
