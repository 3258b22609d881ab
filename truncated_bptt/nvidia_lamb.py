"""LAMB exactly as NVIDIA's Transformer-XL recipe uses it, as a multi-tensor ``torch.optim.Optimizer``.

For every parameter tensor p with gradient g (state m, v start at zero, t counts the tensor's steps)::

    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat, v_hat = m, v                              # bias_correction=False (NVIDIA's default)
    m_hat, v_hat = m / (1 - b1^t), v / (1 - b2^t)    # bias_correction=True
    u = m_hat / (sqrt(v_hat) + eps) + weight_decay * p
    ratio = clamp(||p||, 0, 10) / ||u||,  or 1 where either norm is 0
    p = p - lr * ratio * u

The trust ratio is per parameter *tensor*: a flat concatenation of all parameters would silently
give one global ratio, which is why ``supports_flat_params`` is False.

Two implementations of the same maths (pick with ``compiled``):

- eager multi-tensor (default): every line above is one ``torch._foreach_*`` call over the
  tensors of a group (in chunks of at most 2^25 elements, which bounds the fp32 temporaries),
  norms via ``torch._foreach_norm``; no Python loop over parameters, no host sync on CUDA. On CPU
  its speed is bounded by memory traffic (about 10 full passes over the state).
- ``compiled=True``: the same step as two ``torch.compile``d kernels per tensor (moments + both
  norms, then the update), so each tensor's state is streamed twice instead of ~10 times. Compiling
  takes ~10-30 s once per process (cached on disk by inductor afterwards); needs a C++ compiler on
  CPU and triton on CUDA.

Mixed precision (fairseq's ``--memory-efficient-fp16``/``--memory-efficient-bf16``): parameters and
gradients may be fp16/bf16; the optimizer keeps m and v in fp32, computes in fp32 and writes the
result back rounded to the parameter's dtype. ``step(scale=s)`` divides the gradients by ``s``
(fairseq's loss-scale/clipping factor) inside the fp32 computation, so fp16 gradients are never
unscaled in fp16.
"""
import logging
import math
from typing import List, Optional, Tuple

import torch

logger = logging.getLogger(__name__)

MAX_WEIGHT_NORM = 10.0  # NVIDIA clamps ||p|| to [0, 10] before dividing by ||u||
FOREACH_CHUNK_NUMEL = 2**25  # bound on the eager implementation's temporaries (elements)


class NvidiaLamb(torch.optim.Optimizer):
    """LAMB with NVIDIA's Transformer-XL update rule (see module docstring).

    Args:
        params: parameters or param-group dicts.
        lr: learning rate (the scheduler overwrites it every update).
        betas: (b1, b2) decay rates of the first/second moment averages.
        eps: added to sqrt(v) in the denominator.
        weight_decay: decoupled weight decay, added to the Adam direction before the trust ratio.
        bias_correction: divide m and v by (1 - b^t) (NVIDIA's recipe: off).
        compiled: use the torch.compile'd fused kernels instead of eager ``_foreach`` ops.
    """

    # Read by fairseq's optimizer wrappers (fairseq/optim/fairseq_optimizer.py, fp16_optimizer.py).
    supports_memory_efficient_fp16 = True  # fp16/bf16 params with fp32 state are handled here
    supports_step_with_scale = True  # step(scale=...) unscales gradients in fp32
    supports_flat_params = False  # per-tensor trust ratios need the tensor boundaries
    # Our load_state_dict keeps fp32 state for fp16 params itself; fairseq's workaround for
    # --memory-efficient-fp16 would put checkpoint (CPU) tensors back unconverted.
    disable_mem_eff_fp16_loading_hack = True

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        bias_correction: bool = False,
        compiled: bool = False,
    ):
        if not lr >= 0.0:
            raise ValueError(f"invalid learning rate {lr}: must be >= 0")
        if not eps >= 0.0:
            raise ValueError(f"invalid eps {eps}: must be >= 0")
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid betas {betas}: need two values in [0, 1), e.g. (0.9, 0.999)")
        if not weight_decay >= 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay}: must be >= 0")
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, bias_correction=bias_correction
        )
        super().__init__(params, defaults)
        self.compiled = compiled
        self._compiled_for = set()  # (param dtype, grad dtype, device) the kernels compiled for

    @torch.no_grad()
    def step(self, closure=None, scale=1.0):
        """One LAMB update of every parameter that has a gradient.

        ``scale``: the gradients are divided by it first (float or 0-dim tensor; fairseq passes its
        loss scale times the clipping/normalisation factor here).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        inv_scale = None
        if torch.is_tensor(scale) or scale != 1.0:
            inv_scale = 1.0 / scale
        for group in self.param_groups:
            self._step_group(group, inv_scale)
        return loss

    def _step_group(self, group, inv_scale):
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("nvidia_lamb does not support sparse gradients")
            state = self.state[p]
            if "exp_avg" not in state:
                # fp32 state whatever the parameter's dtype (memory-efficient fp16/bf16).
                state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
            state["step"] = state.get("step", 0) + 1
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        if self.compiled and self._kernels_compile(params, grads):
            _compiled_update(params, grads, exp_avgs, exp_avg_sqs, steps, group, inv_scale)
        else:
            # Tensors are independent (one trust ratio each), so the work can go in chunks: the
            # fp32 temporaries then never exceed about FOREACH_CHUNK_NUMEL elements (or one tensor).
            for chunk in _chunks([p.numel() for p in params], FOREACH_CHUNK_NUMEL):
                _foreach_update(
                    [params[i] for i in chunk], [grads[i] for i in chunk],
                    [exp_avgs[i] for i in chunk], [exp_avg_sqs[i] for i in chunk],
                    [steps[i] for i in chunk], group, inv_scale,
                )

    def _kernels_compile(self, params, grads) -> bool:
        """Compile the kernels for each new dtype/device on dummy tensors before touching any
        state; where torch.compile fails (no C++ compiler, no triton), warn and stay eager."""
        for key in {(p.dtype, g.dtype, p.device) for p, g in zip(params, grads)}:
            if key in self._compiled_for:
                continue
            try:
                _warm_up_kernels(*key)
            except Exception as err:  # compile errors come in many types (inductor, C++, triton)
                logger.warning(
                    "nvidia_lamb: torch.compile failed (%s: %s); using the eager foreach "
                    "implementation instead", type(err).__name__, str(err).splitlines()[0][:200]
                )
                self.compiled = False
                return False
            self._compiled_for.add(key)
        return True

    def load_state_dict(self, state_dict):
        """Load like torch, but keep m and v in fp32 (torch would cast them to fp16/bf16 params)."""
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in saved:
                    self.state[p][key] = saved[key].to(device=p.device, dtype=torch.float32)


def _chunks(sizes: List[int], budget: int) -> List[List[int]]:
    """Consecutive index lists whose sizes sum to at most ``budget`` (a larger size alone)."""
    chunks, current, total = [], [], 0
    for i, size in enumerate(sizes):
        if current and total + size > budget:
            chunks.append(current)
            current, total = [], 0
        current.append(i)
        total += size
    if current:
        chunks.append(current)
    return chunks


def _bias_corrections(steps: List[int], group) -> Optional[Tuple[List[float], List[float]]]:
    """Per tensor (1 - b1^t, sqrt(1 - b2^t)), or None without bias correction."""
    if not group["bias_correction"]:
        return None
    beta1, beta2 = group["betas"]
    return [1.0 - beta1**t for t in steps], [math.sqrt(1.0 - beta2**t) for t in steps]


def _trust_ratios(weight_norms: torch.Tensor, update_norms: torch.Tensor) -> torch.Tensor:
    """clamp(||p||, 0, 10) / ||u|| per tensor, 1 where either norm is 0. Shapes [N] -> [N]."""
    weight_norms = weight_norms.clamp(0.0, MAX_WEIGHT_NORM)
    usable = (weight_norms > 0) & (update_norms > 0)
    return torch.where(usable, weight_norms / update_norms, torch.ones_like(weight_norms))


def _foreach_update(params, grads, exp_avgs, exp_avg_sqs, steps, group, inv_scale):
    """The update with one ``torch._foreach_*`` call per line of the maths."""
    beta1, beta2 = group["betas"]
    eps, weight_decay, lr = group["eps"], group["weight_decay"], group["lr"]
    low_precision = [p.dtype != torch.float32 for p in params]
    # fp32 working copies of fp16/bf16 parameters and gradients (fp32 ones are used in place).
    params32 = [p.float() if low else p for p, low in zip(params, low_precision)]
    grads32 = [g.float() if g.dtype != torch.float32 else g for g in grads]
    if inv_scale is not None:
        grads32 = torch._foreach_mul(grads32, inv_scale)

    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads32, alpha=1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads32, grads32, value=1.0 - beta2)
    del grads32

    # u = m_hat / (sqrt(v_hat) + eps) + wd * p
    corrections = _bias_corrections(steps, group)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    if corrections is not None:
        torch._foreach_div_(denom, corrections[1])
    torch._foreach_add_(denom, eps)
    update = torch._foreach_div(exp_avgs, denom)
    del denom
    if corrections is not None:
        torch._foreach_div_(update, corrections[0])
    if weight_decay != 0:
        torch._foreach_add_(update, params32, alpha=weight_decay)

    ratios = _trust_ratios(
        torch.stack(torch._foreach_norm(params32)), torch.stack(torch._foreach_norm(update))
    )
    # p -= lr * ratio * u, with one 0-dim step size per tensor (no device->host sync).
    torch._foreach_mul_(update, list((ratios * -lr).unbind(0)))
    torch._foreach_add_(params32, update)
    for p, p32, low in zip(params, params32, low_precision):
        if low:
            p.copy_(p32)


# ---- torch.compile'd implementation -------------------------------------------------------------
# Two kernels per tensor. Scalars that change every step (1/scale, bias corrections, lr * ratio)
# are 0-dim tensors so that the kernels are compiled once, not once per step.


def _moments_and_norms(p, g, m, v, inv_scale, c1, c2, beta1: float, beta2: float, eps: float,
                       weight_decay: float):
    """Update m, v in place; return [||p||^2, ||u||^2] (fp32, shape [2]). c1 = 1/(1-b1^t), c2 =
    1/sqrt(1-b2^t) (1 without bias correction)."""
    g = g.float() * inv_scale
    m_new = beta1 * m + (1.0 - beta1) * g
    v_new = beta2 * v + (1.0 - beta2) * (g * g)
    m.copy_(m_new)
    v.copy_(v_new)
    p32 = p.float()
    u = (m_new * c1) / (v_new.sqrt() * c2 + eps) + weight_decay * p32
    return torch.stack([(p32 * p32).sum(), (u * u).sum()])


def _apply_update(p, m, v, step_size, c1, c2, eps: float, weight_decay: float):
    """p -= step_size * u, recomputing u from the new m, v (cheaper than storing it)."""
    p32 = p.float()
    u = (m * c1) / (v.sqrt() * c2 + eps) + weight_decay * p32
    p.copy_(p32 - step_size * u)


_KERNELS = {}


def _kernels():
    if not _KERNELS:
        _KERNELS["moments"] = torch.compile(_moments_and_norms, dynamic=True, fullgraph=True)
        _KERNELS["apply"] = torch.compile(_apply_update, dynamic=True, fullgraph=True)
    return _KERNELS["moments"], _KERNELS["apply"]


def _warm_up_kernels(param_dtype, grad_dtype, device):
    moments, apply = _kernels()
    one = torch.ones((), device=device)
    p = torch.ones(8, dtype=param_dtype, device=device)
    m, v = torch.zeros(8, device=device), torch.zeros(8, device=device)
    g = torch.ones(8, dtype=grad_dtype, device=device)
    moments(p, g, m, v, one, one, one, 0.9, 0.999, 1e-6, 0.0)
    apply(p, m, v, one, one, one, 1e-6, 0.0)


def _flat(t):
    return t.view(-1) if t.is_contiguous() else t


def _compiled_update(params, grads, exp_avgs, exp_avg_sqs, steps, group, inv_scale):
    moments, apply = _kernels()
    beta1, beta2 = group["betas"]
    eps, weight_decay, lr = group["eps"], group["weight_decay"], group["lr"]
    device = params[0].device
    one = torch.ones((), device=device)
    inv_scale = one if inv_scale is None else torch.as_tensor(inv_scale, device=device).float()
    corrections = _bias_corrections(steps, group)
    if corrections is None:
        c1s = c2s = [one] * len(params)
    else:
        c1s = list((1.0 / torch.tensor(corrections[0], device=device)).unbind(0))
        c2s = list((1.0 / torch.tensor(corrections[1], device=device)).unbind(0))
    squares = torch.stack([
        moments(_flat(p), _flat(g), _flat(m), _flat(v), inv_scale, c1, c2, beta1, beta2, eps,
                weight_decay)
        for p, g, m, v, c1, c2 in zip(params, grads, exp_avgs, exp_avg_sqs, c1s, c2s)
    ])
    ratios = _trust_ratios(squares[:, 0].sqrt(), squares[:, 1].sqrt())
    for p, m, v, step_size, c1, c2 in zip(
        params, exp_avgs, exp_avg_sqs, (ratios * lr).unbind(0), c1s, c2s
    ):
        apply(_flat(p), _flat(m), _flat(v), step_size, c1, c2, eps, weight_decay)
