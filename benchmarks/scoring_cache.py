"""How much of a scoring segment's time is spent waiting for memory: each part of the segment as
the scoring loop runs it, beside the same part with its data in the CPU's caches and after the
caches were flushed.

The benchmark configuration of benchmarks/compare.py (see benchmarks/scoring_attention_speed.py)
scores one stream at the eval-lm benchmark's settings (64 tokens a segment, mem_len 640, clamp_len
400, same_length, fp32) as fairseq-eval-lm does: every segment through the decoder in an inference
pass, then its targets through ``target_log_probs``. The parts are the layers' calls and the
softmax. Per part, in ms:

- *in the loop*: the median over ``--segments`` consecutive segments (memory full), timed inside
  the loop;
- *hot*: the part replayed on one segment's captured tensors (a layer's input, attention context,
  key/value buffer and cached position keys; the softmax's features and targets), right after
  itself, so what it reads is as near in the caches as it can be. A layer writes the same
  keys/values into the same buffer slots, so a replay changes nothing; each replay is checked to
  give exactly the pass's result;
- *cold*: the same replay right after writing a buffer far larger than the caches (``--flush-mb``).

Then the whole segment's time in the loop, what lies outside the parts, the time a segment would
take with every part hot, and the machine's read bandwidth for working sets from 1 MB to 256 MB.
Written to ``benchmarks/results/scoring-cache-<UTC time>.txt``:

    .venv/py310/bin/python -m benchmarks.scoring_cache [--repeats 15] [--segments 40]
"""
import argparse
import datetime
import os
import statistics
import time
from typing import Callable, List, Tuple

import torch

from benchmarks.profile_model import read_gb_per_s
from benchmarks.results_file import write_results
from benchmarks.scoring_setup import CLAMP_LEN, MEM_LEN, TOKENS, add_common_arguments, scoring_decoder

FULL_MEMORY = MEM_LEN // TOKENS + 2  # segments after which every layer's memory holds mem_len


def segment_inputs(stream: torch.Tensor, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
    return stream[:, i * TOKENS:(i + 1) * TOKENS], stream[:, i * TOKENS + 1:(i + 1) * TOKENS + 1]


def score_segment(decoder, stream, i: int) -> torch.Tensor:
    src, tgt = segment_inputs(stream, i)
    features, _ = decoder(src, memory_key="cache", segment_index=i)
    return decoder.target_log_probs(features, tgt)


@torch.no_grad()
def capture_parts(decoder, stream, i: int) -> List[Tuple[str, Callable[[], object]]]:
    """Score segment ``i`` and return its parts as (name, call) replaying them on the tensors it
    used: one per layer (through the decoder's own ``_call_layer``) and the softmax; each replay is
    checked to give exactly what the pass computed."""
    layer_calls = []
    call_layer = decoder._call_layer

    def recording(layer, *args):
        out = call_layer(layer, *args)
        layer_calls.append((layer, args, out))
        return out

    decoder._call_layer = recording
    try:
        src, tgt = segment_inputs(stream, i)
        features, _ = decoder(src, memory_key="cache", segment_index=i)
    finally:
        del decoder._call_layer  # back to the class's method
    if len(layer_calls) != len(decoder.layers):
        raise RuntimeError(f"captured {len(layer_calls)} layer calls for {len(decoder.layers)} layers")
    log_probs = decoder.target_log_probs(features, tgt)
    parts = [(f"layer {n}", lambda layer=layer, args=args: call_layer(layer, *args), out)
             for n, (layer, args, out) in enumerate(layer_calls)]
    parts.append(("softmax (target_log_probs)", lambda: decoder.target_log_probs(features, tgt),
                  log_probs))
    for name, run, out in parts:  # a replay must compute what the pass did, from the same tensors
        if not torch.equal(run(), out):
            raise RuntimeError(f"replaying {name} gave another result than the pass")
    return [(name, run) for name, run, _ in parts]


def timed(run: Callable[[], object], repeats: int, flush: torch.Tensor = None) -> float:
    """Median seconds of ``repeats`` runs, each after the previous run (hot) or after writing
    ``flush`` (cold)."""
    run()
    times = []
    for _ in range(repeats):
        if flush is not None:
            flush.add_(1.0)
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_loop(decoder, stream, first: int, segments: int) -> Tuple[List[float], List[List[float]]]:
    """Score ``segments`` segments one after another from ``first``, as fairseq-eval-lm does;
    returns each segment's seconds and, per segment, the seconds of each part inside it (the
    layers' calls, then the softmax)."""
    totals, parts = [], []
    call_layer = decoder._call_layer

    def timing(layer, *args):
        start = time.perf_counter()
        out = call_layer(layer, *args)
        parts[-1].append(time.perf_counter() - start)
        return out

    decoder._call_layer = timing
    try:
        for i in range(first, first + segments):
            parts.append([])
            start = time.perf_counter()
            src, tgt = segment_inputs(stream, i)
            features, _ = decoder(src, memory_key="cache", segment_index=i)
            softmax_start = time.perf_counter()
            decoder.target_log_probs(features, tgt)
            end = time.perf_counter()
            parts[-1].append(end - softmax_start)
            totals.append(end - start)
    finally:
        del decoder._call_layer
    return totals, parts


@torch.no_grad()
def measure(decoder, stream, repeats: int, segments: int, flush_mb: int) -> List[str]:
    for i in range(FULL_MEMORY):
        score_segment(decoder, stream, i)
    totals, in_loop = timed_loop(decoder, stream, FULL_MEMORY, segments)
    parts = capture_parts(decoder, stream, FULL_MEMORY + segments)
    flush = torch.zeros(flush_mb * 2 ** 20 // 4)
    lines = ["part                          in the loop ms   hot ms   cold ms"]
    sums = [0.0, 0.0, 0.0]
    for n, (name, run) in enumerate(parts):
        row = [statistics.median(seconds[n] for seconds in in_loop), timed(run, repeats),
               timed(run, repeats, flush)]
        sums = [a + b for a, b in zip(sums, row)]
        lines.append(f"{name:28s}  {row[0] * 1e3:14.2f}   {row[1] * 1e3:6.2f}   {row[2] * 1e3:7.2f}")
    loop = statistics.median(totals)
    lines += [f"{'sum of the parts':28s}  {sums[0] * 1e3:14.2f}   {sums[1] * 1e3:6.2f}   {sums[2] * 1e3:7.2f}",
              f"the whole segment in the loop (median of {segments}): {loop * 1e3:.2f} ms, of which "
              f"{(loop - sums[0]) * 1e3:.2f} ms outside the parts (embedding, memory, Python)",
              f"the parts take {sums[0] / sums[1]:.2f}x their hot time in the loop and "
              f"{sums[2] / sums[1]:.2f}x cold; with every part hot a segment would take "
              f"{(loop - sums[0] + sums[1]) * 1e3:.2f} ms ({TOKENS / (loop - sums[0] + sums[1]):,.0f} "
              f"tokens/s against the loop's {TOKENS / loop:,.0f})"]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="runs of each part, hot and cold")
    parser.add_argument("--segments", type=int, default=40, help="timed segments of the scoring loop")
    parser.add_argument("--flush-mb", type=int, default=256,
                        help="megabytes written before each cold run (far larger than the caches)")
    add_common_arguments(parser)
    args = parser.parse_args()
    decoder, stream = scoring_decoder(args, TOKENS * (FULL_MEMORY + args.segments + 1) + 1,
                                      f"scoring_cache: --segments {args.segments}")
    lines = [f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}",
             f"scoring 1 x {TOKENS} tokens a segment, mem_len {MEM_LEN}, clamp_len {CLAMP_LEN}, "
             f"same_length, fp32, {len(decoder.layers)} layers, vocabulary {len(decoder.dictionary)}; "
             f"median of {args.repeats} runs per part; cold: after writing {args.flush_mb} MB",
             *measure(decoder, stream, args.repeats, args.segments, args.flush_mb),
             "read bandwidth by working set (an fp32 tensor summed again and again): "
             + ", ".join(f"{mb} MB {read_gb_per_s(mb):.1f} GB/s" for mb in (1, 2, 4, 8, 16, 32, 64, 256))]
    text = "\n".join(lines)
    print(text)
    write_results(text, args.out, "scoring-cache", ".txt")


if __name__ == "__main__":
    main()
