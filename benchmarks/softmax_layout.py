"""Why scoring computes adaptive-softmax logits on oneDNN-packed weights, or else as
``(W @ h^T)^T``, on CPU (truncated_bptt/packed_weights.py; projected_adaptive_softmax.py, ``_linear``).

Scoring one segment evaluates each tail cluster only for the few positions whose target falls in it,
and generation evaluates one position: products of a handful of rows with a large weight. Prints,
for WikiText-2's cluster sizes under cutoffs 2000,10000 and such row counts, the milliseconds of
``F.linear(h, W, b)``, of ``addmm(b, W, h^T)^T`` (one row doubled, as ``_linear`` does) and of
oneDNN's inner product on the weight packed once (what inference passes use where torch has
oneDNN), with the caches flushed before each call as they are between the steps of a real run.
Also written to ``benchmarks/results/softmax-layout-<UTC time>.txt``.

    .venv/py310/bin/python -m benchmarks.softmax_layout [--threads 2]
"""
import argparse
import datetime
import os
import time

import torch
import torch.nn.functional as F

from benchmarks.results_file import write_results
from truncated_bptt.packed_weights import pack, packed_linear, packing_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed_ms(fn, flush: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of ``fn`` with the caches flushed before each call."""
    fn()
    times = []
    for _ in range(repeats):
        flush.add_(1.0)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e3


def transposed(h, weight, bias):
    x = torch.cat([h, h]) if h.size(0) == 1 else h
    return torch.addmm(bias.unsqueeze(1), weight, x.t()).t()[: h.size(0)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--d", type=int, default=256, help="hidden width (the benchmark model's)")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not packing_available():
        raise SystemExit("softmax_layout: this torch has no oneDNN (torch.backends.mkldnn)")
    flush = torch.zeros(64 * 2 ** 20 // 4)  # 64 MiB, more than the last-level cache
    lines = [f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
             f"{args.threads} threads, d {args.d}, load average {os.getloadavg()[0]:.2f}",
             f"{'cluster size':>12} {'rows':>5} {'F.linear ms':>12} {'(W h^T)^T ms':>13} "
             f"{'packed ms':>10} {'packed vs (W h^T)^T':>20}"]
    print("\n".join(lines))
    for size in (2002, 8000, 23280):
        weight, bias = torch.randn(size, args.d), torch.randn(size)
        packed = pack(weight)
        for rows in (1, 2, 4, 8, 16, 64):
            h = torch.randn(rows, args.d)
            want = F.linear(h, weight, bias)
            torch.testing.assert_close(transposed(h, weight, bias), want, rtol=1e-4, atol=1e-3)
            torch.testing.assert_close(packed_linear(h, packed, bias), want, rtol=1e-4, atol=1e-3)
            a = timed_ms(lambda: F.linear(h, weight, bias), flush, args.repeats)
            b = timed_ms(lambda: transposed(h, weight, bias), flush, args.repeats)
            c = timed_ms(lambda: packed_linear(h, packed, bias), flush, args.repeats)
            lines.append(f"{size:>12} {rows:>5} {a:>12.3f} {b:>13.3f} {c:>10.3f} {b / c:>19.2f}x")
            print(lines[-1])
    write_results("\n".join(lines), args.out, "softmax-layout", ".txt")


if __name__ == "__main__":
    main()
