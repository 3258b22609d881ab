"""cosine_warmup: linear warmup from 0, half cosine to eta_min at max_update, flat afterwards.

(The resume through fairseq-train, logged lr included, is tested in test_lamb_optimizer.py.)"""
import math
import warnings

import pytest
import torch

from fairseq.optim import FairseqOptimizer

from truncated_bptt.cosine_warmup_scheduler import CosineWarmupConfig, CosineWarmupSchedule

PEAK, WARMUP, TOTAL, ETA_MIN = 1.0, 4, 12, 0.1


class _SGD(FairseqOptimizer):
    def __init__(self):
        super().__init__(None)
        self._optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=123.0)


def _scheduler(lr=PEAK, warmup=WARMUP, total=TOTAL, eta_min=ETA_MIN, cosine_max_update=None):
    lrs = [float(x) for x in str(lr).split(",")]
    cfg = CosineWarmupConfig(warmup_updates=warmup, eta_min=eta_min, lr=lrs, max_update=total,
                             cosine_max_update=cosine_max_update)
    optimizer = _SGD()
    return CosineWarmupSchedule(cfg, optimizer), optimizer


def test_built_from_command_line_flags():
    """The registered name and flags as fairseq-train parses them."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.optim import lr_scheduler

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        "unused-data", "--task", "truncated_bptt_lm", "--arch", "transformer_xl_tiny",
        "--optimizer", "nvidia_lamb", "--lr", "0.01", "--lr-scheduler", "cosine_warmup",
        "--warmup-updates", "10", "--max-update", "100", "--eta-min", "0.001",
    ])
    cfg = convert_namespace_to_omegaconf(args)
    sched = lr_scheduler.build_lr_scheduler(cfg.lr_scheduler, _SGD())
    assert isinstance(sched, CosineWarmupSchedule)
    assert (sched.peak, sched.warmup, sched.total, sched.eta_min) == (0.01, 10, 100, 0.001)


def test_exact_values_against_closed_form():
    sched, optimizer = _scheduler()
    assert optimizer.get_lr() == 0.0  # set at build time: fairseq's first update runs with lr(0)
    half_cosine = lambda n: ETA_MIN + (PEAK - ETA_MIN) * 0.5 * (  # noqa: E731
        1 + math.cos(math.pi * (n - WARMUP) / (TOTAL - WARMUP)))
    expected = {
        0: 0.0,
        1: PEAK / WARMUP,
        WARMUP: PEAK,
        (WARMUP + TOTAL) // 2: (PEAK + ETA_MIN) / 2,  # middle of the cosine
        TOTAL - 1: half_cosine(TOTAL - 1),
        TOTAL: ETA_MIN,
        TOTAL + 5: ETA_MIN,  # stays at the floor
    }
    for n, lr in expected.items():
        assert sched.step_update(n) == pytest.approx(lr, abs=1e-12), n
        assert optimizer.get_lr() == pytest.approx(lr, abs=1e-12)


def test_matches_nvidias_loop_after_every_update():
    """NVIDIA's train.py after update n: lr * n / warmup while n < warmup, else
    CosineAnnealingLR(T_max = max_step - warmup, eta_min).step(n - warmup)."""
    sched, _ = _scheduler()
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=PEAK)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, TOTAL - WARMUP, eta_min=ETA_MIN)
    lrs = []
    for n in range(1, TOTAL + 1):
        if n < WARMUP:
            nvidia = PEAK * n / WARMUP
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # step(epoch) is deprecated but still NVIDIA's call
                cosine.step(n - WARMUP)
            nvidia = sgd.param_groups[0]["lr"]
        lrs.append(sched.step_update(n))
        assert lrs[-1] == pytest.approx(nvidia, rel=1e-12), n
    assert lrs[: WARMUP] == sorted(lrs[: WARMUP])
    assert lrs[WARMUP - 1:] == sorted(lrs[WARMUP - 1:], reverse=True)


def test_resume_sets_the_same_lr():
    """fairseq's trainer calls step_update(num_updates) after loading a checkpoint; the schedule
    is a function of the update count, so a fresh scheduler continues exactly."""
    sched, _ = _scheduler()
    continuous = [sched.step_update(n) for n in range(TOTAL + 2)]
    fresh, optimizer = _scheduler()
    fresh.load_state_dict(sched.state_dict())
    for n in (7, 8, TOTAL + 1):
        assert fresh.step_update(n) == continuous[n]
        assert optimizer.get_lr() == continuous[n]


def test_no_warmup_starts_at_peak_and_cosine_max_update_overrides():
    sched, _ = _scheduler(warmup=0)
    assert sched.step_update(0) == PEAK
    sched, _ = _scheduler(cosine_max_update=8, total=100)
    assert sched.step_update(8) == pytest.approx(ETA_MIN)
    assert sched.step_update(6) == pytest.approx((PEAK + ETA_MIN) / 2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(total=4), "--max-update"),
    (dict(eta_min=2.0), "--eta-min"),
    (dict(lr="1.0,0.5"), "one peak --lr"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _scheduler(**kwargs)
