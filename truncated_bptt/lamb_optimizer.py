"""fairseq optimizer ``nvidia_lamb``: LAMB with NVIDIA's Transformer-XL maths.

Not fairseq's own ``lamb`` (apex's FusedLAMB with apex defaults: bias correction, global gradient
pre-normalisation, no trust ratio without weight decay). The maths live in
:mod:`truncated_bptt.nvidia_lamb`; this module adds the config, picks the implementation and
refuses the one mixed-precision layout that would silently change the maths.

Mixed precision:

- ``--fp16`` (fairseq's FP16Optimizer) copies all fp32 master weights into ONE flat tensor unless
  ``--fp16-no-flatten-grads`` is given; LAMB's per-tensor trust ratios would silently become one
  global ratio. The parameter boundaries are not passed to the optimizer, so we raise a ValueError
  naming ``--fp16-no-flatten-grads`` instead.
- ``--fp16 --fp16-no-flatten-grads``, ``--amp``: ordinary fp32 (master) parameters.
- ``--memory-efficient-fp16`` / ``--memory-efficient-bf16``: fp16/bf16 parameters, fp32 state kept
  by the optimizer. ``--bf16``: fp32 master copies per tensor (fairseq never flattens for bf16).
"""
import ast
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, List

import torch
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II, OmegaConf

from truncated_bptt.apex_support import apex_available
from truncated_bptt.nvidia_lamb import NvidiaLamb

logger = logging.getLogger(__name__)

LAMB_IMPL_CHOICES = ChoiceEnum(["auto", "foreach", "compiled", "apex"])
# --lamb-impl auto compiles the CPU kernels from this many parameters on (compiling takes ~10-30 s).
AUTO_COMPILE_MIN_PARAMS = 10_000_000


@dataclass
class NvidiaLambConfig(FairseqDataclass):
    lamb_betas: Any = field(
        default=(0.9, 0.999), metadata={"help": "betas (b1, b2) of the gradient moment averages"}
    )
    lamb_eps: float = field(default=1e-6, metadata={"help": "added to sqrt(v) in the denominator"})
    weight_decay: float = field(
        default=0.0,
        metadata={"help": "decoupled weight decay, added to the update before the trust ratio"},
    )
    lamb_bias_correction: bool = field(
        default=False,
        metadata={"help": "divide the moments by (1 - beta^t) (NVIDIA's recipe does not)"},
    )
    lamb_impl: LAMB_IMPL_CHOICES = field(
        default="auto",
        metadata={
            "help": "foreach: eager multi-tensor torch ops (exact NVIDIA maths); compiled: the "
            "same maths as torch.compile'd fused kernels (fastest on CPU, compiles once per "
            "process, falls back to foreach if compiling fails); apex: apex's FusedLAMB (CUDA, "
            "fp32 params; no clamp of ||p|| at 10); auto: apex if installed and the parameters "
            "are fp32 on CUDA, compiled for >= 10M parameters on CPU, else foreach"
        },
    )
    lr: List[float] = II("optimization.lr")
    # Mixed-precision layout, read to detect fairseq's flattened fp32 master weights.
    fp16: bool = II("common.fp16")
    bf16: bool = II("common.bf16")
    amp: bool = II("common.amp")
    memory_efficient_fp16: bool = II("common.memory_efficient_fp16")
    memory_efficient_bf16: bool = II("common.memory_efficient_bf16")
    fp16_no_flatten_grads: bool = II("common.fp16_no_flatten_grads")
    ddp_backend: str = II("distributed_training.ddp_backend")


def _setting(cfg, name, default):
    """A config value, or ``default`` where it is missing or an unresolved ``${...}``."""
    try:
        value = getattr(cfg, name, default)
    except Exception:  # interpolation that cannot be resolved (cfg built outside fairseq)
        return default
    if isinstance(value, str) and value.startswith("${"):
        return default
    return value


def check_layout_keeps_tensors(cfg) -> None:
    """Raise a one-line ValueError for fairseq settings that hand the optimizer flattened params."""
    if _setting(cfg, "ddp_backend", None) == "fully_sharded":
        raise ValueError(
            "nvidia_lamb needs per-tensor trust ratios, which --ddp-backend fully_sharded "
            "flattens away: use --ddp-backend c10d (or legacy_ddp/no_c10d)"
        )
    flag = lambda name: bool(_setting(cfg, name, False))  # noqa: E731
    flattened = (
        flag("fp16")
        and not flag("bf16")
        and not flag("amp")
        and not flag("memory_efficient_fp16")
        and not flag("memory_efficient_bf16")
        and not flag("fp16_no_flatten_grads")
    )
    if flattened:
        raise ValueError(
            "--fp16 flattens all fp32 master weights into one tensor, which would turn "
            "nvidia_lamb's per-tensor trust ratios into one global ratio: add "
            "--fp16-no-flatten-grads (or use --memory-efficient-fp16, --amp or --bf16)"
        )


def parse_betas(betas) -> tuple:
    """``"(0.9, 0.999)"`` (CLI string), a list/tuple or an OmegaConf list -> tuple of 2 floats."""
    if isinstance(betas, str):
        betas = ast.literal_eval(betas)
    elif OmegaConf.is_config(betas):
        betas = OmegaConf.to_container(betas)
    betas = tuple(float(b) for b in betas)
    if len(betas) != 2:
        raise ValueError(f"--lamb-betas needs two values like '(0.9, 0.999)', got {betas}")
    return betas


def choose_implementation(requested: str, params: List[torch.Tensor]) -> str:
    """Resolve ``--lamb-impl`` (``auto`` included) for these parameters; clear errors otherwise."""
    all_cuda_fp32 = bool(params) and all(p.is_cuda and p.dtype == torch.float32 for p in params)
    if requested == "apex":
        if not apex_available():
            raise ValueError(
                "--lamb-impl apex needs NVIDIA apex built with its CUDA extensions, which is not "
                "installed: use --lamb-impl foreach"
            )
        if not all_cuda_fp32:
            raise ValueError(
                "--lamb-impl apex needs fp32 parameters on CUDA (apex keeps fp16 state for fp16 "
                "params and has no bf16): use --lamb-impl foreach with --memory-efficient-fp16/bf16"
            )
        return "apex"
    if requested == "auto":
        if apex_available() and all_cuda_fp32:
            return "apex"
        on_cpu = bool(params) and all(p.device.type == "cpu" for p in params)
        if on_cpu and sum(p.numel() for p in params) >= AUTO_COMPILE_MIN_PARAMS:
            return "compiled"  # memory-bound eager ops are slow on CPU; compiling pays off
        return "foreach"
    return requested


@register_optimizer("nvidia_lamb", dataclass=NvidiaLambConfig)
class FairseqNvidiaLamb(FairseqOptimizer):
    """LAMB as in NVIDIA's Transformer-XL recipe (see :class:`truncated_bptt.nvidia_lamb.NvidiaLamb`)."""

    def __init__(self, cfg: NvidiaLambConfig, params):
        super().__init__(cfg)
        check_layout_keeps_tensors(cfg)
        params = list(params)
        impl = choose_implementation(str(cfg.lamb_impl), params)
        if impl == "apex":
            from apex.optimizers import FusedLAMB

            logger.info(
                "nvidia_lamb: using apex FusedLAMB (does not clamp ||p|| at 10; otherwise the "
                "same maths; --lamb-impl foreach for NVIDIA's exact rule)"
            )
            self._optimizer = FusedLAMB(
                params,
                **self.optimizer_config,
                adam_w_mode=True,  # weight decay added to the update, not to the gradient
                grad_averaging=True,  # m uses (1 - b1) * g
                max_grad_norm=float("inf"),  # no global grad pre-normalisation (--clip-norm does it)
                use_nvlamb=True,  # trust ratio also when weight_decay == 0
            )
        else:
            logger.info("nvidia_lamb: using the %s implementation", impl)
            self._optimizer = NvidiaLamb(
                params, **self.optimizer_config, compiled=(impl == "compiled")
            )

    @property
    def optimizer_config(self):
        """Hyper-parameters that override those stored in checkpoints on --restore-file."""
        lr = self.cfg.lr[0] if isinstance(self.cfg.lr, Collection) else self.cfg.lr
        return {
            "lr": lr,
            "betas": parse_betas(self.cfg.lamb_betas),
            "eps": self.cfg.lamb_eps,
            "weight_decay": self.cfg.weight_decay,
            "bias_correction": self.cfg.lamb_bias_correction,
        }
