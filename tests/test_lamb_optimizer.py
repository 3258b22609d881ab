"""nvidia_lamb: NVIDIA's LAMB rule against a plain per-parameter reference, under fairseq's
mixed-precision wrappers (overflow included), and through checkpoints."""
import functools
import io
import os

import pytest
import torch

from examples.fairseq_logs import by_update, parse_training_log
from fairseq_commands import USER_DIR, run

import truncated_bptt  # noqa: F401  (registers nvidia_lamb / cosine_warmup)
from truncated_bptt.cosine_warmup_scheduler import cosine_warmup_lr
from truncated_bptt.lamb_optimizer import FairseqNvidiaLamb
from truncated_bptt.nvidia_lamb import NvidiaLamb

SHAPES = [(5, 3), (7,), (2, 3, 4), (4,), (300,)]


def reference_lamb_step(params, grads, state, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
                        bias_correction=False):
    """Textbook LAMB, one tensor at a time, written straight from the formula (fp32)."""
    b1, b2 = betas
    for i, (p, g) in enumerate(zip(params, grads)):
        m, v, t = state.get(i, (torch.zeros_like(p), torch.zeros_like(p), 0))
        t += 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = (m / (1 - b1**t), v / (1 - b2**t)) if bias_correction else (m, v)
        u = m_hat / (torch.sqrt(v_hat) + eps) + weight_decay * p
        weight_norm = torch.clamp(torch.norm(p), 0, 10)
        update_norm = torch.norm(u)
        if weight_norm == 0 or update_norm == 0:
            ratio = 1.0
        else:
            ratio = weight_norm / update_norm
        p -= lr * ratio * u
        state[i] = (m, v, t)


def _initial_values(seed=0):
    gen = torch.Generator().manual_seed(seed)
    values = [torch.randn(s, generator=gen) for s in SHAPES]
    values[3].zero_()  # ||p|| = 0: ratio 1
    values[4] *= 3.0  # ||p|| ~ 52 > 10: the clamp matters
    return values


def _grads(step, seed=1):
    gen = torch.Generator().manual_seed(seed * 1000 + step)
    grads = [torch.randn(s, generator=gen) for s in SHAPES]
    return grads


def _run_ours(values, n_steps, dtype=torch.float32, start=0, state_dict=None, **kw):
    params = [torch.nn.Parameter(v.clone().to(dtype)) for v in values]
    opt = NvidiaLamb(params, **kw)
    if state_dict is not None:
        opt.load_state_dict(state_dict)
    for step in range(start, start + n_steps):
        for p, g in zip(params, _grads(step)):
            p.grad = g.to(dtype)
        opt.step()
    return params, opt


@pytest.mark.parametrize("weight_decay,bias_correction", [(0.0, False), (0.01, False), (0.01, True)])
def test_foreach_matches_reference(weight_decay, bias_correction):
    values = _initial_values()
    kw = dict(lr=0.05, weight_decay=weight_decay, bias_correction=bias_correction)
    ours, _ = _run_ours(values, 4, **kw)
    ref, state = [v.clone() for v in values], {}
    for step in range(4):
        reference_lamb_step(ref, _grads(step), state, **kw)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach(), b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("weight_decay,bias_correction", [(0.0, False), (0.01, False), (0.01, True)])
def test_zero_gradient_moves_only_by_decay(weight_decay, bias_correction):
    """A tensor whose gradient stays zero keeps zero moments: u = weight_decay * p. Without decay
    ||u|| = 0, so the ratio is 1 and the tensor never moves; with decay the ratio is
    ||p|| / ||wd p|| = 1 / wd and every step multiplies p by exactly (1 - lr). The other tensors,
    stepped in the same multi-tensor call, still follow the reference."""
    values = _initial_values()
    frozen = torch.randn(6, 2, generator=torch.Generator().manual_seed(5))  # ||p|| < 10
    params = [torch.nn.Parameter(v.clone()) for v in values + [frozen]]
    kw = dict(lr=0.05, weight_decay=weight_decay, bias_correction=bias_correction)
    opt, ref, state = NvidiaLamb(params, **kw), [v.clone() for v in values], {}
    for step in range(4):
        for p, g in zip(params, _grads(step) + [torch.zeros_like(frozen)]):
            p.grad = g
        opt.step()
        reference_lamb_step(ref, _grads(step), state, **kw)
    expected = frozen * (1 - 0.05) ** 4 if weight_decay else frozen
    torch.testing.assert_close(params[-1].detach(), expected, rtol=1e-6, atol=0)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.detach(), r, rtol=1e-6, atol=1e-6)


def test_chunked_foreach_equals_unchunked(monkeypatch):
    import truncated_bptt.nvidia_lamb as nvidia_lamb

    assert nvidia_lamb._chunks([5, 5, 20, 1, 1], 10) == [[0, 1], [2], [3, 4]]
    values = _initial_values()
    whole, _ = _run_ours(values, 2, lr=0.05, weight_decay=0.01)
    monkeypatch.setattr(nvidia_lamb, "FOREACH_CHUNK_NUMEL", 20)  # several chunks for SHAPES
    chunked, _ = _run_ours(values, 2, lr=0.05, weight_decay=0.01)
    for a, b in zip(whole, chunked):
        assert torch.equal(a, b)


def _has_cpp_compiler() -> bool:
    """Whether inductor finds the C++ compiler it needs on CPU (CI has g++). torch's own search, so
    that a moved or renamed function fails this test instead of passing it for the wrong reason."""
    from torch._inductor import cpp_builder, exc

    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        return False
    return True


def test_compiled_matches_foreach(monkeypatch, caplog):
    """compiled=True runs the torch.compile'd kernels, not the eager foreach update, wherever a C++
    compiler exists; only without one does it fall back, saying so."""
    import truncated_bptt.nvidia_lamb as nvidia_lamb

    values = _initial_values()
    kw = dict(lr=0.05, weight_decay=0.01, bias_correction=True)
    eager, eager_opt = _run_ours(values, 3, **kw)
    paths = []  # which update function each step called

    def recorded(name):
        update = getattr(nvidia_lamb, name)

        def record(*args):
            paths.append(name)
            return update(*args)
        return record

    for name in ("_foreach_update", "_compiled_update"):
        monkeypatch.setattr(nvidia_lamb, name, recorded(name))
    with caplog.at_level("WARNING"):
        fused, fused_opt = _run_ours(values, 3, compiled=True, **kw)
    if not _has_cpp_compiler():
        assert not fused_opt.compiled and "torch.compile failed" in caplog.text
        assert set(paths) == {"_foreach_update"}
        return
    assert fused_opt.compiled and "torch.compile failed" not in caplog.text, caplog.text
    assert paths == ["_compiled_update"] * 3  # one call per step (one param group), never eager
    for a, b in zip(eager, fused):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(eager, fused):
        torch.testing.assert_close(
            eager_opt.state[a]["exp_avg_sq"], fused_opt.state[b]["exp_avg_sq"], rtol=1e-5, atol=0
        )


def test_compile_failure_falls_back_to_foreach(monkeypatch, caplog):
    import truncated_bptt.nvidia_lamb as nvidia_lamb

    def no_compiler(*args):
        raise RuntimeError("no C++ compiler\nmore detail")

    monkeypatch.setattr(nvidia_lamb, "_warm_up_kernels", no_compiler)
    values = _initial_values()
    eager, _ = _run_ours(values, 2, lr=0.05)
    with caplog.at_level("WARNING"):
        fallback, opt = _run_ours(values, 2, lr=0.05, compiled=True)
    assert not opt.compiled and "torch.compile failed (RuntimeError: no C++ compiler)" in caplog.text
    for a, b in zip(eager, fallback):
        assert torch.equal(a, b)


def test_implementation_choice(monkeypatch):
    from truncated_bptt import lamb_optimizer

    monkeypatch.setattr(lamb_optimizer, "apex_available", lambda: False)
    small = [torch.nn.Parameter(torch.zeros(10))]
    large = [torch.zeros(1).expand(lamb_optimizer.AUTO_COMPILE_MIN_PARAMS)]  # no memory
    assert lamb_optimizer.choose_implementation("auto", small) == "foreach"
    assert lamb_optimizer.choose_implementation("auto", large) == "compiled"
    assert lamb_optimizer.choose_implementation("foreach", large) == "foreach"
    with pytest.raises(ValueError, match="apex .* not installed: use --lamb-impl foreach"):
        lamb_optimizer.choose_implementation("apex", small)
    monkeypatch.setattr(lamb_optimizer, "apex_available", lambda: True)
    with pytest.raises(ValueError, match="fp32 parameters on CUDA"):
        lamb_optimizer.choose_implementation("apex", small)  # CPU params


def test_step_scale_divides_gradients():
    values = _initial_values()
    scaled = [torch.nn.Parameter(v.clone()) for v in values]
    plain = [torch.nn.Parameter(v.clone()) for v in values]
    opt_scaled, opt_plain = NvidiaLamb(scaled, lr=0.1), NvidiaLamb(plain, lr=0.1)
    for p, q, g in zip(scaled, plain, _grads(0)):
        p.grad, q.grad = g * 64.0, g.clone()
    opt_scaled.step(scale=torch.tensor(64.0))
    opt_plain.step()
    for p, q in zip(scaled, plain):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_params_keep_fp32_state(dtype):
    values = [v.to(dtype).float() for v in _initial_values()]  # representable in dtype
    ours, opt = _run_ours(values, 1, dtype=dtype, lr=0.05)
    ref = [v.clone() for v in values]
    reference_lamb_step(ref, [g.to(dtype).float() for g in _grads(0)], {}, lr=0.05)
    for p, r in zip(ours, ref):
        assert p.dtype == dtype
        assert opt.state[p]["exp_avg"].dtype == torch.float32
        torch.testing.assert_close(p.detach(), r.to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_state_dict_round_trip_resumes_exactly(dtype):
    values = _initial_values()
    straight, _ = _run_ours(values, 4, dtype=dtype, lr=0.05, weight_decay=0.01)
    first, opt = _run_ours(values, 2, dtype=dtype, lr=0.05, weight_decay=0.01)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed, opt2 = _run_ours(
        [p.detach().float() for p in first], 2, dtype=dtype, start=2, state_dict=saved,
        lr=0.05, weight_decay=0.01,
    )
    for p in resumed:
        assert opt2.state[p]["exp_avg"].dtype == torch.float32
        assert opt2.state[p]["step"] == 4
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


# ---- fairseq's wrappers (built from the real command-line config) -------------------------------


@functools.lru_cache(maxsize=None)
def _cfg(*flags):
    """The config fairseq-train builds from these flags (parsed once per flag set)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        "unused-data", "--task", "truncated_bptt_lm", "--arch", "transformer_xl_tiny",
        "--optimizer", "nvidia_lamb", "--lr", "0.05", "--fp16-init-scale", "128",
        "--fp16-scale-window", "1000", *flags,
    ])
    return convert_namespace_to_omegaconf(args)


def test_flattened_fp16_is_refused_naming_the_flag():
    from fairseq import optim

    cfg = _cfg("--fp16")
    with pytest.raises(ValueError, match="--fp16-no-flatten-grads"):
        optim.build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.ones(3))])
    # The fixes it names are accepted.
    for flags in (["--fp16", "--fp16-no-flatten-grads"], ["--memory-efficient-fp16"], ["--amp"]):
        opt = optim.build_optimizer(_cfg(*flags).optimizer, [torch.nn.Parameter(torch.ones(3))])
        assert isinstance(opt, FairseqNvidiaLamb)
        assert not opt.supports_flat_params
    assert opt.supports_memory_efficient_fp16


def _fairseq_update(opt, params, loss_fn):
    """One update the way fairseq's trainer drives a wrapper; returns False on overflow."""
    opt.zero_grad()
    opt.backward(loss_fn(params))
    try:
        opt.clip_grad_norm(0.0)
    except OverflowError:
        opt.zero_grad()
        return False
    opt.step()
    return True


@pytest.mark.parametrize("wrapper,flags,dtype", [
    ("FP16Optimizer", ["--fp16", "--fp16-no-flatten-grads"], torch.float16),
    ("MemoryEfficientFP16Optimizer", ["--memory-efficient-fp16"], torch.float16),
    ("FP16Optimizer", ["--bf16"], torch.bfloat16),
    ("MemoryEfficientFP16Optimizer", ["--memory-efficient-bf16"], torch.bfloat16),
])
def test_mixed_precision_wrappers(wrapper, flags, dtype):
    from fairseq import optim

    values = [v.to(dtype).float() for v in _initial_values()]
    params = [torch.nn.Parameter(v.to(dtype)) for v in values]
    opt = getattr(optim, wrapper).build_optimizer(_cfg(*flags), params)
    grads = [g.to(dtype).float() for g in _grads(0)]

    if dtype == torch.float16:  # dynamic loss scaling: an overflowing update is skipped
        assert opt.scaler.loss_scale == 128
        huge = lambda ps: sum((p.float() * 1e5).sum() for p in ps)  # noqa: E731  (grad 1.3e7 > fp16 max)
        assert _fairseq_update(opt, params, huge) is False
        assert opt.scaler.loss_scale == 64
        for p, v in zip(params, values):
            assert torch.equal(p.detach().float(), v)
        assert len(opt.optimizer.state) == 0

    linear = lambda ps: sum((p.float() * g).sum() for p, g in zip(ps, grads))  # noqa: E731
    assert _fairseq_update(opt, params, linear) is True
    ref = [v.clone() for v in values]
    reference_lamb_step(ref, grads, {}, lr=0.05)
    for p, r in zip(params, ref):
        assert p.dtype == dtype
        torch.testing.assert_close(p.detach().float(), r.to(dtype).float(), rtol=0, atol=0)
    for state in opt.optimizer.state.values():
        assert state["exp_avg"].dtype == torch.float32


def test_amp_wrapper_steps_like_reference():
    """--amp on CPU: torch's GradScaler disables itself without CUDA, so only the plain path runs
    here (its overflow skipping is torch's GradScaler, exercised on GPUs)."""
    import warnings

    from fairseq import optim

    values = _initial_values()
    params = [torch.nn.Parameter(v.clone()) for v in values]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optim.AMPOptimizer.build_optimizer(_cfg("--amp"), params)
    grads = _grads(0)
    opt.zero_grad()
    opt.backward(sum((p * g).sum() for p, g in zip(params, grads)))
    opt.clip_grad_norm(0.0)
    opt.step()
    ref = [v.clone() for v in values]
    reference_lamb_step(ref, grads, {}, lr=0.05)
    for p, r in zip(params, ref):
        torch.testing.assert_close(p.detach(), r, rtol=1e-6, atol=1e-6)


# ---- through fairseq-train: checkpoint + --restore-file ----------------------------------------

def _train(data, save_dir, max_epoch, *extra):
    return run(
        "fairseq-train", data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm",
        "--tokens-per-sample", 16, "--batch-size", 4, "--arch", "transformer_xl_tiny",
        "--n-layer", 1, "--d-model", 16, "--n-head", 2, "--d-head", 8, "--d-inner", 32,
        "--mem-len", 16, "--cutoffs", "8", "--dropout", 0.0,
        "--optimizer", "nvidia_lamb", "--weight-decay", 0.01, "--lr", PEAK,
        "--lr-scheduler", "cosine_warmup", "--warmup-updates", WARMUP, "--eta-min", ETA_MIN,
        "--max-update", MAX_UPDATE, "--clip-norm", 0.25, "--max-epoch", max_epoch,
        "--save-dir", save_dir, "--seed", 1, "--cpu",
        "--log-format", "json", "--log-interval", 1, *extra,
    )


PEAK, WARMUP, ETA_MIN, MAX_UPDATE = 0.02, 3, 0.002, 12


def test_fairseq_train_resume_is_exact(tmp_path, cycle_corpus):
    """Two epochs straight vs. the same run restarted from its epoch-1 checkpoint: identical
    weights, LAMB state and learning rates (the schedule is a function of the update count).
    Under --memory-efficient-fp16: fp16 weights, fp32 LAMB state, dynamic loss scaling."""
    data = cycle_corpus(str(tmp_path), {split: (24, 0) for split in ("train", "valid", "test")})

    straight_log = _train(data, tmp_path / "straight", 2, "--memory-efficient-fp16")
    log = _train(data, tmp_path / "resumed", 2, "--memory-efficient-fp16",
                 "--restore-file", tmp_path / "straight" / "checkpoint1.pt")
    assert "Loaded checkpoint" in log and "nvidia_lamb" in log

    a = torch.load(os.path.join(tmp_path, "straight", "checkpoint2.pt"), weights_only=False)
    b = torch.load(os.path.join(tmp_path, "resumed", "checkpoint2.pt"), weights_only=False)
    c = torch.load(os.path.join(tmp_path, "straight", "checkpoint1.pt"), weights_only=False)
    n_first = c["optimizer_history"][-1]["num_updates"]
    n_total = a["optimizer_history"][-1]["num_updates"]
    assert 0 < n_first < n_total == b["optimizer_history"][-1]["num_updates"]
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    assert a["last_optimizer_state"]["loss_scale"] == b["last_optimizer_state"]["loss_scale"]
    state_a, state_b = a["last_optimizer_state"]["state"], b["last_optimizer_state"]["state"]
    assert state_a.keys() == state_b.keys() and len(state_a) > 0
    for key in state_a:
        assert state_a[key]["step"] == state_b[key]["step"] == n_total
        assert state_b[key]["exp_avg"].dtype == torch.float32
        assert torch.equal(state_a[key]["exp_avg"], state_b[key]["exp_avg"])
        assert torch.equal(state_a[key]["exp_avg_sq"], state_b[key]["exp_avg_sq"])

    # fairseq logs lr(n), the rate set after update n, next to num_updates = n.
    expected = {n: cosine_warmup_lr(n, PEAK, WARMUP, MAX_UPDATE, ETA_MIN)
                for n in range(1, n_total + 1)}
    logged = by_update(parse_training_log(straight_log)["train"], "lr")
    assert logged.keys() == expected.keys()
    resumed = by_update(parse_training_log(log)["train"], "lr")
    assert min(resumed) == n_first + 1
    for n, lr in {**logged, **resumed}.items():
        assert lr == pytest.approx(expected[n], rel=1e-5), n
