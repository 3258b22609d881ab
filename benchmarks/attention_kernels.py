"""Relative attention kernels side by side: the reference (matmuls, relative shift, softmax), torch's
fused scaled_dot_product_attention with the position term as its bias (``--attention sdpa``), and
FlexAttention (``score_mod`` reading the position scores, ``block_mask`` for causality and
same_length), eager and compiled.

For each kernel and shape: the largest difference from the reference (fp32; outputs, and for
training the gradients of q, k, v and the position keys), and the median time of a forward
(scoring) or forward + backward (training) over the runs. Shapes of benchmarks/compare.py: scoring
1 x 64 queries over 640 + 64 keys, clamp_len 400, same_length; training 8 x 128 over 128 + 128.
Writes ``benchmarks/results/attention-<UTC time>.md``:

    .venv/py310/bin/python -m benchmarks.attention_kernels [--threads 2] [--compiled-flex]
"""
import argparse
import datetime
import math
import os
import statistics
import time

import torch

from benchmarks.results_file import write_results
from truncated_bptt.relative_attention import (
    attention_mask,
    expand_clamped_positions,
    fused_relative_attention,
    position_encodings,
    relative_attention,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {  # name: (batch, queries, memory, clamp_len, same_length, training)
    "scoring": (1, 64, 640, 400, True, False),
    "training": (8, 128, 128, -1, False, True),
}
HEADS, D_HEAD, D_MODEL = 4, 64, 256


def flex_attention_kernel(compiled: bool):
    """The relative attention as FlexAttention, or None where torch has no FlexAttention."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    attend = torch.compile(flex_attention) if compiled else flex_attention

    def kernel(q, k, v, position_keys, u, vb, mask_fn):
        bsz, qlen, heads, d_head = q.shape
        klen, mlen = k.size(1), k.size(1) - qlen
        scale = 1.0 / math.sqrt(d_head)
        q_position = ((q + vb) * scale).permute(0, 2, 1, 3)  # [B, H, T, D]
        table = torch.einsum("bhtd,phd->bhtp", q_position, position_keys)
        table = expand_clamped_positions(table, klen)  # [B, H, T, K + 1], column T - i + j

        def score_mod(score, b, h, i, j):
            return score + table[b, h, i, torch.clamp(qlen - i + j, max=klen)]

        block_mask = create_block_mask(lambda b, h, i, j: mask_fn(i, j, mlen), None, None, qlen, klen,
                                       device=q.device)
        out = attend((q + u).transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                     score_mod=score_mod, block_mask=block_mask, scale=scale)
        return out.transpose(1, 2).reshape(bsz, qlen, heads * d_head)

    return kernel


def inputs(shape):
    bsz, qlen, mlen, clamp_len, same_length, training = shape
    g = torch.Generator().manual_seed(0)
    klen = mlen + qlen

    def rand(*size):
        return torch.randn(*size, generator=g).requires_grad_(training)

    q, k, v = rand(bsz, qlen, HEADS, D_HEAD), rand(bsz, klen, HEADS, D_HEAD), rand(bsz, klen, HEADS, D_HEAD)
    weight = torch.randn(HEADS * D_HEAD, D_MODEL, generator=g) / 16
    enc = position_encodings(klen, D_MODEL, clamp_len, distinct=True)
    position_keys = (enc @ weight.t()).view(-1, HEADS, D_HEAD).detach().requires_grad_(training)
    u, vb = torch.randn(HEADS, D_HEAD, generator=g), torch.randn(HEADS, D_HEAD, generator=g)
    mask = attention_mask(qlen, mlen, same_length, mlen)

    def mask_fn(i, j, m):  # True where query i may see key j (FlexAttention's convention)
        visible = j <= m + i
        return visible & (m + i - j < mlen) if same_length else visible

    return (q, k, v, position_keys, u, vb), mask, mask_fn, training


def run(kernel, args, mask, mask_fn, training, flex):
    out = kernel(*args, mask_fn) if flex else kernel(*args, mask)
    grads = []
    if training:
        out.backward(torch.ones_like(out))
        grads = [a.grad.clone() for a in args[:4]]
        for a in args[:4]:
            a.grad = None
    return [out.detach()] + grads


def measure(name, kernel, shape, runs, flex=False):
    args, mask, mask_fn, training = inputs(shape)
    results = run(kernel, args, mask, mask_fn, training, flex)  # also the warm-up (compilation)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(kernel, args, mask, mask_fn, training, flex)
        times.append(time.perf_counter() - start)
    return name, results, statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--compiled-flex", action="store_true", help="also FlexAttention compiled")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [f"# Attention kernels, {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, fp32; load average "
             f"at start {os.getloadavg()[0]:.2f}. Command: `python -m benchmarks.attention_kernels "
             f"--threads {args.threads} --runs {args.runs}{' --compiled-flex' if args.compiled_flex else ''}`",
             "", "| shape | kernel | max difference from the reference | median ms | vs reference |",
             "|---|---|---:|---:|---:|"]
    for shape_name, shape in SHAPES.items():
        kernels = [("reference", relative_attention, False), ("sdpa", fused_relative_attention, False)]
        for compiled in (False, True) if args.compiled_flex else (False,):
            flex = flex_attention_kernel(compiled)
            if flex is not None:
                kernels.append((f"flex{' (compiled)' if compiled else ' (eager)'}", flex, True))
        measured = []
        for name, kernel, flex in kernels:
            try:
                measured.append(measure(name, kernel, shape, args.runs, flex=flex))
            except (NotImplementedError, RuntimeError) as err:  # e.g. no backward on CPU
                lines.append(f"| {shape_name} | {name} | not supported: "
                             f"{str(err).strip().splitlines()[0][:120]} | - | - |")
                print(lines[-1], flush=True)
        reference, ref_time = measured[0][1], measured[0][2]
        for name, results, seconds in measured:
            diff = max(float((a - b).abs().max()) for a, b in zip(results, reference))
            lines.append(f"| {shape_name} | {name} | {diff:.2e} | {1e3 * seconds:.2f} | "
                         f"{ref_time / seconds:.2f}x |")
            print(lines[-1], flush=True)
    write_results("\n".join(lines), args.out, "attention", ".md")


if __name__ == "__main__":
    main()
