"""Measure the machine's practical matmul peak (FLOP/s) in one dtype with torch at a given thread count.

The peak is the best of many timed square matmuls (n x n times n x n costs 2*n**3 FLOPs), large
enough that the kernel runs at full speed. It is the denominator of the "fraction of peak" that
benchmarks/compare.py reports, per dtype: fp32 rows against the fp32 peak, bf16 rows against the
bf16 peak. Prints one line `RESULT {json}`.

    python -m benchmarks.matmul_peak --threads 2
    python -m benchmarks.matmul_peak --threads 2 --dtype bfloat16
"""
import argparse
import json
import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def matmul_flops_per_s(n: int, seconds: float, dtype=torch.float32) -> float:
    """Best FLOP/s over products of two random n x n matrices timed one by one for about `seconds`
    (after one warm-up): the best single product is the one least disturbed by other processes."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: page in, let the BLAS pick its kernel
    best = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 3072])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing time per size")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="dtype of both matrices (and of the product)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    per_size = {n: matmul_flops_per_s(n, args.seconds, DTYPES[args.dtype]) for n in args.sizes}
    best_n = max(per_size, key=per_size.get)
    print("RESULT " + json.dumps({
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "flops_per_s": per_size[best_n],
        "best_size": best_n,
        "per_size": {str(k): v for k, v in per_size.items()},
    }), flush=True)


if __name__ == "__main__":
    main()
