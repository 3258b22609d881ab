"""fairseq lr scheduler ``cosine_warmup``: NVIDIA Transformer-XL's linear warmup + half cosine.

With peak = ``--lr``, W = ``--warmup-updates``, T = ``--max-update`` (or ``--cosine-max-update``)
and the floor eta_min = ``--eta-min``, the learning rate after n updates is::

    lr(n) = peak * n / W                                                  for n < W
    lr(n) = eta_min + (peak - eta_min) * (1 + cos(pi * (n - W) / (T - W))) / 2   for W <= n <= T
    lr(n) = eta_min                                                       for n > T

Not fairseq's ``cosine``, which warms up from ``--warmup-init-lr`` and restarts its cosine periods.

Step indexing. fairseq sets lr(0) when the optimizer is built and lr(n) right after update n
(``step_update(num_updates)``), so update number n (counting from 1) runs with lr(n - 1); the first
update therefore has lr 0 when W > 0. NVIDIA's train.py sets the lr after its n-th update
(``train_step = n``) to the same closed form (``args.lr * n / W`` during warmup, then
``CosineAnnealingLR.step(n - W)`` with ``T_max = max_step - W``), so both run update n with
lr(n - 1), except NVIDIA's very first update, which runs with the unscheduled peak lr. The lr is a
pure function of the update count, so resuming from a checkpoint continues the schedule exactly.
"""
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import List, Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from omegaconf import II


@dataclass
class CosineWarmupConfig(FairseqDataclass):
    warmup_updates: int = field(
        default=0,
        metadata={"help": "updates over which the lr rises linearly from 0 to --lr"},
    )
    eta_min: float = field(
        default=0.0,
        metadata={"help": "floor of the cosine: the lr at --max-update and after it"},
    )
    cosine_max_update: Optional[int] = field(
        default=None,
        metadata={
            "help": "update at which the cosine reaches --eta-min (default: --max-update; like "
            "NVIDIA's --max_step_scheduler)"
        },
    )
    lr: List[float] = II("optimization.lr")
    max_update: int = II("optimization.max_update")


def cosine_warmup_lr(num_updates: int, peak: float, warmup: int, total: int, eta_min: float):
    """The closed form above: learning rate after ``num_updates`` updates."""
    if num_updates < warmup:
        return peak * num_updates / warmup
    if num_updates >= total:
        return eta_min
    progress = (num_updates - warmup) / (total - warmup)
    return eta_min + (peak - eta_min) * (1.0 + math.cos(math.pi * progress)) / 2.0


@register_lr_scheduler("cosine_warmup", dataclass=CosineWarmupConfig)
class CosineWarmupSchedule(FairseqLRScheduler):
    """Linear warmup from 0 to ``--lr``, half cosine down to ``--eta-min``, then flat."""

    def __init__(self, cfg: CosineWarmupConfig, optimizer):
        super().__init__(cfg, optimizer)
        if isinstance(cfg.lr, Collection):
            if len(cfg.lr) > 1:
                raise ValueError(
                    f"cosine_warmup takes one peak --lr, got {list(cfg.lr)}: pass a single value"
                )
            self.peak = float(cfg.lr[0])
        else:
            self.peak = float(cfg.lr)
        self.warmup = int(cfg.warmup_updates)
        self.total = int(cfg.cosine_max_update or cfg.max_update or 0)
        self.eta_min = float(cfg.eta_min)
        if self.warmup < 0:
            raise ValueError(f"--warmup-updates must be >= 0, got {self.warmup}")
        if self.total <= self.warmup:
            raise ValueError(
                f"cosine_warmup needs --max-update (or --cosine-max-update) > --warmup-updates, "
                f"got {self.total} <= {self.warmup}: set --max-update to the training length"
            )
        if not 0.0 <= self.eta_min <= self.peak:
            raise ValueError(
                f"--eta-min must be in [0, --lr], got {self.eta_min} with --lr {self.peak}"
            )
        self.optimizer.set_lr(self.lr_at(0))

    def lr_at(self, num_updates: int) -> float:
        return cosine_warmup_lr(num_updates, self.peak, self.warmup, self.total, self.eta_min)

    def step(self, epoch, val_loss=None):
        """End of epoch: the lr depends only on the update count."""
        super().step(epoch, val_loss)
        return self.optimizer.get_lr()

    def step_update(self, num_updates):
        """Set the lr for the update after ``num_updates`` updates."""
        self.optimizer.set_lr(self.lr_at(num_updates))
        return self.optimizer.get_lr()
