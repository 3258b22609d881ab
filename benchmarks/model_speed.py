"""Speed of our Transformer-XL (``--arch transformer_xl``) on the issue's benchmark configuration.

Prints, for a training step (forward + target-indexed adaptive softmax loss + backward, streaming
with memory) and for evaluation-style scoring (no grad):
tokens/s, peak memory, FLOPs per step (counted by torch's FlopCounterMode) and the achieved fraction of
the matmul FLOP/s measured in the same process with the same thread count.

    .venv/py310/bin/python -m benchmarks.model_speed            # CPU, 2 threads, fp32
    .venv/py310/bin/python -m benchmarks.model_speed --device cuda --steps 50

(from the repository root, which puts this checkout's ``truncated_bptt`` first on the path).

Default config (the issue's): 4 layers, d_model 256, 4 heads x 64, d_inner 1024,
tokens_per_sample 128, mem_len 128, batch 8, WikiText-2's vocabulary (33,278 types + 4 fairseq
specials) with cutoffs 2000,10000. Evaluation: tokens_per_sample 64, mem_len 640, clamp_len 400,
same_length, batch 1.
"""
import argparse
import os
import resource
import statistics
import time

import torch

from fairseq.data import Dictionary

from truncated_bptt.transformer_xl_model import TransformerXLConfig, TransformerXLDecoder

WT2_TYPES = 33278


# WikiText-2's training text where this project's machines keep it (beside the repository).
WT2_TRAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "shared", "data", "wikitext-2", "train.txt")


def build_dictionary(train_txt, n_types):
    """fairseq Dictionary of WikiText-2's training text if it is there, else one of the same size."""
    if train_txt and os.path.exists(train_txt):
        d = Dictionary()
        Dictionary.add_file_to_dictionary(train_txt, d, lambda line: line.split(), num_workers=1)
        d.finalize()
        return d
    d = Dictionary()
    for i in range(n_types):
        d.add_symbol(f"w{i}")
    return d


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype, n=2048, seconds=2.0):
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = 0.0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best


def count_flops(fn):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def text_tokens(dictionary, train_txt, shape, device):
    """The first tokens of WikiText-2's training text, as ``shape[0]`` consecutive streams."""
    needed = shape[0] * shape[1]
    if not (train_txt and os.path.exists(train_txt)):
        return None
    ids = []
    with open(train_txt, encoding="utf-8") as f:
        for line in f:
            ids.append(dictionary.encode_line(line, add_if_not_exist=False, append_eos=True))
            if sum(len(t) for t in ids) >= needed:
                break
    flat = torch.cat(ids)
    if flat.numel() < needed:
        return None
    return flat[:needed].view(shape).long().to(device)


def zipf_tokens(n_token, shape, generator, device):
    """Token ids with a Zipf-like frequency profile (ids are frequency-sorted, as fairseq's are)."""
    ranks = torch.arange(1, n_token - 3, dtype=torch.float64)
    probs = 1.0 / ranks
    ids = torch.multinomial(probs / probs.sum(), shape[0] * shape[1], replacement=True,
                            generator=generator) + 4
    return ids.view(shape).to(device)


def time_steps(step, steps, warmup, device):
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def peak_memory_mb(device, rss_before_kb):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20, "max CUDA memory allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss - rss_before_kb) / 1024, "growth of the process's peak RSS during the runs"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--train-txt", default=WT2_TRAIN,
                        help="WikiText-2's train.txt (default: ../shared/data/wikitext-2 beside the repository; without it, Zipf-distributed tokens over a vocabulary of its size)")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--d-head", type=int, default=64)
    p.add_argument("--d-inner", type=int, default=1024)
    p.add_argument("--cutoffs", default="2000,10000")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--dropatt", type=float, default=0.0)
    p.add_argument("--tokens-per-sample", type=int, default=128)
    p.add_argument("--mem-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--eval-tokens-per-sample", type=int, default=64)
    p.add_argument("--eval-mem-len", type=int, default=640)
    p.add_argument("--eval-clamp-len", type=int, default=400)
    p.add_argument("--eval-steps", type=int, default=40)
    p.add_argument("--skip-eval", action="store_true")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    dictionary = build_dictionary(args.train_txt, WT2_TYPES)
    cfg = TransformerXLConfig(
        n_layer=args.n_layer, d_model=args.d_model, n_head=args.n_head, d_head=args.d_head,
        d_inner=args.d_inner, cutoffs=[int(c) for c in args.cutoffs.split(",")],
        dropout=args.dropout, dropatt=args.dropatt, mem_len=args.mem_len,
        tokens_per_sample=args.tokens_per_sample,
    )
    model = TransformerXLDecoder(cfg, dictionary).to(device=device, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    bsz, tps = args.batch_size, args.tokens_per_sample
    n_segments = 16
    shape = (bsz, tps * n_segments + 1)
    stream = None
    if args.train_txt and os.path.exists(args.train_txt):
        stream = text_tokens(dictionary, args.train_txt, shape, device)
    data = "WikiText-2 training text"
    if stream is None:
        stream, data = zipf_tokens(len(dictionary), shape, gen, device), "Zipf-distributed random ids"
    pad = dictionary.pad()

    peak = matmul_peak(device, dtype)
    print(f"device {device}, threads {torch.get_num_threads()}, dtype {args.dtype}, "
          f"load average {os.getloadavg()[0]:.2f} (other processes share the CPU)")
    cluster_share = [((stream >= lo) & (stream < hi)).float().mean().item()
                     for lo, hi in zip([0] + cfg.cutoffs, cfg.cutoffs + [len(dictionary)])]
    print(f"tokens: {data}; share per adaptive-softmax cluster "
          + ", ".join(f"{100 * x:.1f}%" for x in cluster_share))
    print(f"vocabulary {len(dictionary)}, parameters {n_params:,}, measured {args.dtype} matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s (2048^3)")

    segment = [0]

    def train_step():
        i = segment[0] % n_segments
        src = stream[:, i * tps:(i + 1) * tps]
        tgt = stream[:, i * tps + 1:(i + 1) * tps + 1]
        features, _ = model(src, memory_key="train", segment_index=i)
        lp = model.target_log_probs(features, tgt)
        loss = -lp.masked_fill(tgt.eq(pad), 0.0).sum()
        loss.backward()
        segment[0] += 1

    model.train()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = time_steps(train_step, args.steps, args.warmup, device)
    mem_mb, mem_what = peak_memory_mb(device, rss0)
    flops = count_flops(train_step)
    model.zero_grad(set_to_none=True)
    med = statistics.median(times)
    tokens = bsz * tps
    print(f"train fwd+bwd: batch {bsz} x {tps} tokens, mem_len {args.mem_len}, {args.steps} steps "
          f"after {args.warmup} warm-up: median {med * 1e3:.1f} ms/step, best {min(times) * 1e3:.1f} ms")
    print(f"  tokens/s median {tokens / med:,.0f}  best {tokens / min(times):,.0f}")
    print(f"  FLOPs/step {flops / 1e9:.2f} G -> {flops / med / 1e9:.1f} GFLOP/s = "
          f"{100 * flops / med / peak:.0f}% of the measured matmul peak")
    print(f"  peak memory {mem_mb:,.0f} MiB ({mem_what})")

    if args.skip_eval:
        return
    model.set_memory_options(mem_len=args.eval_mem_len, clamp_len=args.eval_clamp_len,
                             same_length=True)
    model.eval()
    etps = args.eval_tokens_per_sample
    eval_stream = stream[:1]
    n_eval_segments = eval_stream.size(1) // etps - 1
    eseg = [0]

    @torch.no_grad()
    def eval_step():
        i = eseg[0] % n_eval_segments
        src = eval_stream[:, i * etps:(i + 1) * etps]
        tgt = eval_stream[:, i * etps + 1:(i + 1) * etps + 1]
        features, _ = model(src, memory_key="valid", segment_index=i)
        model.target_log_probs(features, tgt)
        eseg[0] += 1

    # Fill the memory to its full length first: the steady state of a long evaluation.
    for _ in range(args.eval_mem_len // etps + 1):
        eval_step()
    times = time_steps(eval_step, args.eval_steps, 2, device)
    med = statistics.median(times)
    print(f"eval (no grad): batch 1 x {etps} tokens, mem_len {args.eval_mem_len}, clamp_len "
          f"{args.eval_clamp_len}, same_length: median {med * 1e3:.1f} ms/segment, "
          f"tokens/s median {etps / med:,.0f}  best {etps / min(times):,.0f}")


if __name__ == "__main__":
    main()
