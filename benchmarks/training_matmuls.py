"""The fp32 training step's own matrix products against the machine's matmul peak: how near 75 % of
the peak a step could come on this CPU if nothing but its products took time.

The benchmark configuration of benchmarks/compare.py (4 layers, d_model 256, 4 heads x 64, d_inner
1024, WikiText-2's vocabulary, cutoffs 2000,10000; 8 x 128 tokens a step over mem_len 128) trains as
benchmarks/profile_model.py does: forward and backward, memory carried over. One step is run under a
``TorchDispatchMode`` that records every matrix product (``mm``, ``bmm``, ``addmm``, ``baddbmm``,
forward and backward) with its operands' shapes and strides and times it where it runs. Each
distinct product is then replayed alone on fresh tensors of the same shapes and strides, back to
back, its best run kept: the way benchmarks/matmul_peak.py measures the peak (best single square
product, 1024-3072). It prints the products by time, the step's time (median of ``--steps``
unrecorded steps), the products' FLOPs and time inside the step and alone, and what share of the
peak the step would reach if everything else took no time, and writes them to
``benchmarks/results/training-matmuls-<UTC time>.txt``:

    .venv/py310/bin/python -m benchmarks.training_matmuls [--steps 8] [--seconds 0.3]
"""
import argparse
import collections
import datetime
import os
import statistics
import time
from typing import Dict, List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.matmul_peak import matmul_flops_per_s
from benchmarks.profile_model import build_auto, training_step
from benchmarks.results_file import write_results
from truncated_bptt.cpu_heap import keep_freed_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
aten = torch.ops.aten
# each overload the step may dispatch (``torch.mm(..., out=)`` is mm.out), by the product it computes
PRODUCTS = {getattr(getattr(aten, name), overload): name
            for name in ("mm", "bmm", "addmm", "baddbmm") for overload in ("default", "out")}
Layout = Tuple[Tuple[int, ...], Tuple[int, ...]]  # (shape, strides) of one operand


def flops(name: str, operands: List[Layout]) -> int:
    """FLOPs of one product: 2 M N K (times the batch for bmm/baddbmm)."""
    a, b = (operands[0][0], operands[1][0]) if name in ("mm", "bmm") else (operands[1][0], operands[2][0])
    batch = a[0] if name in ("bmm", "baddbmm") else 1
    return 2 * batch * a[-2] * a[-1] * b[-1]


class ProductRecorder(TorchDispatchMode):
    """Times every matrix product dispatched while active: ``calls[(name, layouts)]`` is the list of
    seconds of each call with those operand layouts (the bias of addmm/baddbmm included)."""

    def __init__(self):
        super().__init__()
        self.calls: Dict[Tuple[str, Tuple[Layout, ...]], List[float]] = collections.defaultdict(list)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = PRODUCTS.get(func)
        if name is None:
            return func(*args, **(kwargs or {}))
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        seconds = time.perf_counter() - start
        layouts = tuple((tuple(t.shape), tuple(t.stride())) for t in args if isinstance(t, torch.Tensor))
        self.calls[(name, layouts)].append(seconds)
        return out


def replay_seconds(name: str, layouts: Tuple[Layout, ...], seconds: float) -> float:
    """Best time of the product run alone, back to back for about ``seconds``, on random operands
    with the recorded shapes and strides (its output allocated by the op, as in the step)."""
    # random storage read through the recorded strides (which may repeat elements: stride 0)
    operands = [torch.randn(1 + sum((n - 1) * st for n, st in zip(shape, strides))).as_strided(shape, strides)
                for shape, strides in layouts]
    func = {"mm": torch.mm, "bmm": torch.bmm, "addmm": torch.addmm, "baddbmm": torch.baddbmm}[name]
    func(*operands)
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        func(*operands)
        best = min(best, time.perf_counter() - start)
    return best


def describe(name: str, layouts: Tuple[Layout, ...]) -> str:
    parts = []
    for shape, strides in layouts:
        transposed = len(shape) >= 2 and strides[-1] != 1
        parts.append("x".join(map(str, shape)) + ("T" if transposed else ""))
    return f"{name} " + ", ".join(parts)


def measure(model, stream, steps: int, seconds: float, peak: float) -> List[str]:
    keep_freed_memory()  # as the task does at fairseq-train's first CPU step (cpu_heap.py)
    model.train()
    segments = (stream.size(1) - 1) // 128
    for i in range(3):
        training_step(model, stream, i)
    step_seconds = []
    for i in range(3, 3 + steps):
        start = time.perf_counter()
        training_step(model, stream, i % segments)
        step_seconds.append(time.perf_counter() - start)
    recorder = ProductRecorder()
    with recorder:
        training_step(model, stream, (3 + steps) % segments)
    rows = []
    for (name, layouts), times in recorder.calls.items():
        alone = replay_seconds(name, layouts, seconds)
        rows.append((sum(times), len(times), flops(name, list(layouts)), alone, describe(name, layouts)))
    rows.sort(reverse=True)
    lines = ["product (operand shapes, T: transposed)               calls   GFLOP  in step ms  alone ms  alone % of peak"]
    for in_step, count, each, alone, text in rows:
        lines.append(f"{text:52s}  {count:5d}  {each * count / 1e9:6.3f}  {in_step * 1e3:10.2f}  "
                     f"{alone * count * 1e3:8.2f}  {each / alone / peak * 100:14.1f} %")
    total_flops = sum(each * count for _, count, each, _, _ in rows)
    timings = [(f"the whole step (median of {steps})", statistics.median(step_seconds)),
               ("its products inside the step", sum(r[0] for r in rows)),
               ("the same products, each alone (best runs)", sum(alone * count for _, count, _, alone, _ in rows))]
    lines.append(f"{sum(r[1] for r in rows)} matrix products a step, {total_flops / 1e9:.2f} GFLOP")
    for label, seconds in timings:
        lines.append(f"{label}: {seconds * 1e3:.1f} ms, {total_flops / seconds / 1e9:.1f} GFLOP/s, "
                     f"{total_flops / seconds / peak * 100:.1f} % of the peak")
    lines.append(f"so if nothing but the products took time and each ran as fast as alone, a step would "
                 f"reach {total_flops / timings[2][1] / peak * 100:.1f} % of the peak (the target: 75 %, "
                 f"a step of {total_flops / (0.75 * peak) * 1e3:.1f} ms)")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed training steps")
    parser.add_argument("--seconds", type=float, default=0.3, help="replay time per distinct product")
    parser.add_argument("--peak-seconds", type=float, default=2.0,
                        help="timing time per size of the peak (benchmarks/matmul_peak.py's --seconds)")
    parser.add_argument("--train-txt", default=None, help="as benchmarks/profile_model.py's")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, stream = build_auto(args.train_txt)
    peak = max(matmul_flops_per_s(n, args.peak_seconds) for n in (1024, 2048))
    lines = [f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}",
             "training step 8 x 128 tokens, mem_len 128, fp32, 4 layers, d_model 256, vocabulary "
             f"{len(model.dictionary)}; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s (best square "
             "product of 1024 and 2048, benchmarks/matmul_peak.py)",
             *measure(model, stream, args.steps, args.seconds, peak)]
    text = "\n".join(lines)
    print(text)
    write_results(text, args.out, "training-matmuls", ".txt")


if __name__ == "__main__":
    main()
