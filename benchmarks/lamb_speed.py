"""Time one nvidia_lamb step at the size of NVIDIA's Transformer-XL base model (WikiText-103).

The parameter list is built from the shapes alone (no model): 16 layers of d_model 512, 8 heads x
64, d_inner 2048 (fused qkv, output and position projections without bias, two layer norms, the
feed-forward with biases), shared u/v biases, and the adaptive input/softmax of a 267,735-word
vocabulary with cutoffs 20000,40000,200000 and div_val 1 (one embedding table tied with the
softmax weight, the softmax bias and the 3 cluster logits): 182 tensors, 192M parameters.

Compares, on identical random parameters and gradients:

- ``loop``: a per-parameter Python loop over the tensors (NVIDIA's lamb.py style: one tensor at a
  time, temporaries per tensor), the baseline;
- ``foreach``: NvidiaLamb's eager multi-tensor implementation (``--lamb-impl foreach``);
- ``compiled``: NvidiaLamb with torch.compile'd fused kernels (``--lamb-impl compiled``); its
  one-off compile time is reported separately and not included in the step time.

Prints the median step time of each and its speed-up over ``loop``, and with ``--out`` writes the
same lines with the machine's load average before and after to a results file. Not a test (timings
depend on the machine); e.g.
``OMP_NUM_THREADS=1 python -m benchmarks.lamb_speed --repeat 5 --out benchmarks/results/lamb-cpu.md``
from the repository root (which puts this checkout's ``truncated_bptt`` first on the path).
"""
import argparse
import datetime
import os
import statistics
import sys
import time

import torch

from truncated_bptt.nvidia_lamb import NvidiaLamb


def nvidia_base_shapes(n_layer=16, d_model=512, n_head=8, d_head=64, d_inner=2048,
                       vocab=267735, cutoffs=(20000, 40000, 200000)):
    shapes = []
    for _ in range(n_layer):
        shapes += [
            (3 * n_head * d_head, d_model),  # fused q, k, v projection (no bias)
            (d_model, n_head * d_head),  # output projection (no bias)
            (n_head * d_head, d_model),  # relative position projection (no bias)
            (d_model,), (d_model,),  # attention layer norm
            (d_inner, d_model), (d_inner,), (d_model, d_inner), (d_model,),  # feed-forward
            (d_model,), (d_model,),  # feed-forward layer norm
        ]
    shapes += [(n_head, d_head), (n_head, d_head)]  # shared u, v biases
    shapes += [(vocab, d_model), (vocab,)]  # tied embedding/softmax weight, softmax bias
    shapes += [(len(cutoffs), d_model), (len(cutoffs),)]  # cluster logits
    return shapes


def loop_step(params, grads, states, lr, betas, eps, weight_decay):
    """The baseline: one tensor at a time, each line a separate torch op on that tensor."""
    b1, b2 = betas
    for p, g, (m, v) in zip(params, grads, states):
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        weight_norm = p.norm().clamp(0, 10)
        u = m / v.sqrt().add(eps)
        if weight_decay != 0:
            u.add_(p, alpha=weight_decay)
        update_norm = u.norm()
        ratio = weight_norm / update_norm if weight_norm > 0 and update_norm > 0 else 1.0
        p.add_(u, alpha=-lr * float(ratio))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed steps per implementation")
    parser.add_argument("--impls", default="loop,foreach,compiled")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--out", help="also write the printed lines, the command and the load "
                                      "average before and after to this file")
    args = parser.parse_args()
    lines = []

    def say(line):
        print(line, flush=True)
        lines.append(line)

    started = datetime.datetime.utcnow()
    load_before = os.getloadavg()[0]

    torch.manual_seed(0)
    shapes = nvidia_base_shapes()
    device = torch.device(args.device)
    init = [torch.randn(s, device=device) * 0.02 for s in shapes]
    grads = [torch.randn(s, device=device) * 1e-3 for s in shapes]
    n_params = sum(p.numel() for p in init)
    say(f"{len(shapes)} tensors, {n_params / 1e6:.1f}M parameters, device {device}, "
        f"{torch.get_num_threads()} threads, weight_decay {args.weight_decay}")
    hyper = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=args.weight_decay)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    results = {}
    for impl in args.impls.split(","):
        params = [p.clone() for p in init]
        if impl == "loop":
            states = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
            step = lambda: loop_step(params, grads, states, **hyper)  # noqa: E731
        else:
            params = [torch.nn.Parameter(p) for p in params]
            for p, g in zip(params, grads):
                p.grad = g
            opt = NvidiaLamb(params, compiled=(impl == "compiled"), **hyper)
            step = opt.step
        start = time.perf_counter()
        step()  # first step: allocates state (and compiles for "compiled")
        sync()
        first = time.perf_counter() - start
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
        results[impl] = statistics.median(times)
        say(f"{impl:>9}: {results[impl] * 1e3:9.1f} ms/step (median of {args.repeat}; "
            f"first step {first:.1f} s)")
        del params, step
    if "loop" in results:
        for impl, t in results.items():
            if impl != "loop":
                say(f"{impl:>9}: {results['loop'] / t:.2f}x faster than the per-parameter loop")
    if args.out:
        command = " ".join(["python -m benchmarks.lamb_speed"] + sys.argv[1:])
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(f"Run: {started:%Y-%m-%d %H:%M:%S} UTC, command: `OMP_NUM_THREADS="
                    f"{os.environ.get('OMP_NUM_THREADS', 'unset')} {command}`; torch "
                    f"{torch.__version__}; load average {load_before:.2f} before, "
                    f"{os.getloadavg()[0]:.2f} after\n\n```\n" + "\n".join(lines) + "\n```\n")


if __name__ == "__main__":
    main()
