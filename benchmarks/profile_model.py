"""Where the time of a training step and of a scoring step goes (torch.profiler, CPU).

The benchmark configuration of benchmarks/compare.py (4 layers, d_model 256, 4 heads x 64,
d_inner 1024, WikiText-2's vocabulary with cutoffs 2000,10000): training 8 x 128 tokens with
mem_len 128 (forward, target-indexed loss on the forward's tied output weights, backward); scoring 1 x 64 tokens with mem_len 640,
clamp_len 400, same_length, in an inference pass (memory filled first). Prints, for each, the
operators by their own (self) CPU time; for scoring also the time of the softmax's products beside
the bytes of weights they read, and the machine's streaming read bandwidth from main memory (what
those products would take if their weights come from there every step). Writes the same to
``benchmarks/results/profile-<UTC time>.txt``:

    .venv/py310/bin/python -m benchmarks.profile_model [--attention sdpa] [--compile]
"""
import argparse
import datetime
import os
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.model_speed import WT2_TRAIN, WT2_TYPES, build_dictionary, text_tokens, zipf_tokens
from benchmarks.results_file import write_results
from truncated_bptt.cpu_heap import keep_freed_memory
from truncated_bptt.tied_table import output_weights_of
from truncated_bptt.transformer_xl_model import TransformerXLConfig, TransformerXLDecoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(args):
    dictionary = build_dictionary(args.train_txt, WT2_TYPES)
    cfg = TransformerXLConfig(n_layer=4, d_model=256, n_head=4, d_head=64, d_inner=1024,
                              cutoffs=[2000, 10000], dropout=0.0, dropatt=0.0, mem_len=128,
                              tokens_per_sample=128, attention=args.attention, compile=args.compile)
    torch.manual_seed(0)
    model = TransformerXLDecoder(cfg, dictionary)
    shape = (8, 128 * 16 + 1)
    stream = text_tokens(dictionary, args.train_txt, shape, "cpu") if args.train_txt else None
    if stream is None:
        stream = zipf_tokens(len(dictionary), shape, torch.Generator().manual_seed(0), "cpu")
    return model, stream


def build_auto(train_txt=None):
    """:func:`build` with the defaults (``--attention auto``, no compile) on ``train_txt``, or on
    WikiText-2's train.txt where it is present: (decoder, stream)."""
    if train_txt is None and os.path.exists(WT2_TRAIN):
        train_txt = WT2_TRAIN
    return build(argparse.Namespace(train_txt=train_txt, attention="auto", compile=False))


def table(prof, rows: int) -> str:
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def training_step(model, stream, i: int) -> None:
    """Forward and backward of the benchmark's training segment ``i`` (8 x 128 tokens of ``stream``,
    memory carried over), gradients dropped after: the work of the step that
    benchmarks/train_step_speed.py times through fairseq's task, called directly."""
    src, tgt = stream[:, i * 128:(i + 1) * 128], stream[:, i * 128 + 1:(i + 1) * 128 + 1]
    net_output = model(src, memory_key="train", segment_index=i)
    (-model.target_log_probs(net_output[0], tgt, output_weights_of(net_output)).sum()).backward()
    model.zero_grad(set_to_none=True)


def profile_training(model, stream, steps: int) -> str:
    keep_freed_memory()  # what the task does at fairseq-train's first CPU step (cpu_heap.py)
    model.train()
    for i in range(3):  # warm-up (and compilation with --compile)
        training_step(model, stream, i)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(3, 3 + steps):
            training_step(model, stream, i)
    return table(prof, 25)


def read_gb_per_s(megabytes: int = 256, runs: int = 5) -> float:
    """The machine's read bandwidth for a working set of ``megabytes``: the median time of summing
    an fp32 tensor of that size again and again (after one untimed sum, which brings into the caches
    what fits there). At 256 MB, far larger than the CPU's caches, it reads from main memory."""
    data = torch.ones(megabytes * 2 ** 20 // 4)
    data.sum()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - start)
    return megabytes * 2 ** 20 / statistics.median(times) / 1e9


def output_weight_bytes(model, target) -> int:
    """Bytes of softmax weights a scoring step reads for ``target``: the head's (with its rows for
    the tail clusters), and each tail cluster's that holds a target (one table, no projections:
    the benchmark configuration)."""
    softmax = model.softmax
    bounds, d_embed = softmax.bounds, softmax.out_layers[0].weight.size(1)
    rows = bounds[1] + softmax.n_clusters
    for lo, hi in zip(bounds[1:-1], bounds[2:]):
        if bool(((target >= lo) & (target < hi)).any()):
            rows += hi - lo
    return 4 * d_embed * rows


@torch.no_grad()
def profile_scoring(model, stream, steps: int) -> str:
    model.set_memory_options(mem_len=640, clamp_len=400, same_length=True)
    model.eval()
    tokens = stream[0].unsqueeze(0)
    weight_bytes = []

    def step(i):
        src, tgt = tokens[:, i * 64:(i + 1) * 64], tokens[:, i * 64 + 1:(i + 1) * 64 + 1]
        features, _ = model(src, memory_key="valid", segment_index=i)
        model.target_log_probs(features, tgt)
        weight_bytes.append(output_weight_bytes(model, tgt))

    for i in range(12):  # fill the memory to its full 640 positions first
        step(i)
    weight_bytes.clear()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(12, 12 + steps):
            step(i)
    # Only the softmax's products run on oneDNN-packed weights in scoring (packed_weights.py).
    products_us = sum(e.self_cpu_time_total for e in prof.key_averages()
                      if e.key == "mkldnn::_linear_pointwise") / steps
    read_mb = sum(weight_bytes) / steps / 1e6
    if products_us > 0:
        products = (f"the softmax's products on packed weights: {products_us / 1e3:.2f} ms a step, "
                    f"reading {read_mb:.1f} MB of weights on average ({read_mb / products_us * 1e3:.1f} GB/s)")
    else:
        products = "the softmax's products: not on packed weights here (no oneDNN), not separated"
    bandwidth = (f"streaming read of a 256 MB tensor (main memory): {read_gb_per_s():.1f} GB/s")
    return "\n".join([table(prof, 25), products, bandwidth])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-txt", default=WT2_TRAIN,
                        help="WikiText-2's train.txt (default: ../shared/data/wikitext-2 beside the repository; without it, Zipf-distributed tokens over a vocabulary of its size)")
    parser.add_argument("--attention", default="auto", choices=["auto", "reference", "sdpa"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.train_txt and not os.path.exists(args.train_txt):
        args.train_txt = None
    model, stream = build(args)
    report = [f"profile of {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC: torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, attention {args.attention}, compile {args.compile}, "
              f"load average {os.getloadavg()[0]:.2f}",
              f"\ntraining step (8 x 128 tokens, mem_len 128), {args.steps} steps:",
              profile_training(model, stream, args.steps),
              f"\nscoring step (1 x 64 tokens, mem_len 640, clamp_len 400, same_length), "
              f"{2 * args.steps} steps:",
              profile_scoring(model, stream, 2 * args.steps)]
    text = "\n".join(report)
    print(text)
    write_results(text, args.out, "profile", ".txt")


if __name__ == "__main__":
    main()
