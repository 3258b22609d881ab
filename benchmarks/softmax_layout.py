"""Why scoring computes adaptive-softmax logits as ``(W @ h^T)^T`` on CPU (see
truncated_bptt/projected_adaptive_softmax.py, ``_linear``).

Scoring one segment evaluates each tail cluster only for the few positions whose target falls in it,
and generation evaluates one position: products of a handful of rows with a large weight. Prints,
for WikiText-2's cluster sizes under cutoffs 2000,10000 and such row counts, the milliseconds of
``F.linear(h, W, b)`` and of ``addmm(b, W, h^T)^T`` (one row doubled, as ``_linear`` does), with the
caches flushed before each call as they are between the steps of a real run.

    .venv/py310/bin/python benchmarks/softmax_layout.py [--threads 2]
"""
import argparse
import time

import torch
import torch.nn.functional as F


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flush = torch.zeros(64 * 2 ** 20 // 4)  # 64 MiB, more than the last-level cache
    print(f"torch {torch.__version__}, {args.threads} threads, d {args.d}")
    print(f"{'cluster size':>12} {'rows':>5} {'F.linear ms':>12} {'(W h^T)^T ms':>13} {'speed-up':>9}")
    for size in (2002, 8000, 23280):
        weight, bias = torch.randn(size, args.d), torch.randn(size)
        for rows in (1, 2, 4, 8, 16, 64):
            h = torch.randn(rows, args.d)
            torch.testing.assert_close(transposed(h, weight, bias), F.linear(h, weight, bias),
                                       rtol=1e-4, atol=1e-3)
            a = timed_ms(lambda: F.linear(h, weight, bias), flush, args.repeats)
            b = timed_ms(lambda: transposed(h, weight, bias), flush, args.repeats)
            print(f"{size:>12} {rows:>5} {a:>12.3f} {b:>13.3f} {a / b:>8.2f}x")


if __name__ == "__main__":
    main()
