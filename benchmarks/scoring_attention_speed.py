"""Scoring with the inference attention kernel against the reference kernel, side by side.

The benchmark configuration of benchmarks/compare.py (4 layers, d_model 256, 4 heads x 64,
WikiText-2's vocabulary, cutoffs 2000,10000) scoring one stream at the eval-lm benchmark's settings
(64 tokens a segment, mem_len 640, clamp_len 400, same_length), fp32 on CPU, as fairseq-eval-lm runs
it: every segment through the decoder in an inference pass (memory kept in its buffers, the pass's
cache) and its targets through ``target_log_probs``. "indexed" is ``--attention auto`` (on CPU it
realigns and masks the position scores with one gather and lets the content GEMM add onto them:
``relative_attention.indexed_relative_attention``); "reference" is ``--attention reference`` on the
same weights. The two alternate round by round, each round a whole pass from a fresh memory, so a
drift of the machine reaches both. The log-probabilities of one pass are checked equal first, and
that each variant ran its kernel. Prints ms per segment, the ratio of the best rounds and the
round-by-round ratios (the machine's speed drifts between rounds by more than the difference
measured, and a round's two passes share its drift), and writes them to
``benchmarks/results/scoring-attention-<UTC time>.txt``:

    .venv/py310/bin/python -m benchmarks.scoring_attention_speed [--rounds 8] [--segments 96]
"""
import argparse
import datetime
import os
import statistics
import time

import torch

from benchmarks.results_file import rounds_table, write_results
from benchmarks.scoring_setup import TOKENS, add_common_arguments, scoring_decoder
from truncated_bptt import relative_attention

VARIANTS = {"indexed": "auto", "reference": "reference"}


def set_variant(decoder, variant: str) -> None:
    for layer in decoder.layers:
        layer.attn.implementation = VARIANTS[variant]


@torch.no_grad()
def scoring_pass(decoder, stream, segments: int, tokens: int = 64) -> torch.Tensor:
    """One pass over the first ``segments`` segments of ``stream`` ``[1, N]``, from a fresh memory;
    returns the targets' log-probabilities ``[1, segments * tokens]``."""
    out = []
    for i in range(segments):
        src = stream[:, i * tokens:(i + 1) * tokens]
        tgt = stream[:, i * tokens + 1:(i + 1) * tokens + 1]
        features, _ = decoder(src, memory_key="speed", segment_index=i)
        out.append(decoder.target_log_probs(features, tgt))
    return torch.cat(out, dim=1)


def checked_log_probs(decoder, stream, segments: int) -> dict:
    """Each variant's log-probabilities of one pass, asserting which kernel ran."""
    calls = []
    kernel = relative_attention.indexed_relative_attention

    def counting(*args):
        calls.append(1)
        return kernel(*args)

    relative_attention.indexed_relative_attention = counting
    try:
        results = {}
        for variant in VARIANTS:
            set_variant(decoder, variant)
            before = len(calls)
            results[variant] = scoring_pass(decoder, stream, segments)
            ran = len(calls) - before
            want = len(decoder.layers) * segments if variant == "indexed" else 0
            assert ran == want, f"{variant}: {ran} calls of the indexed kernel, expected {want}"
    finally:
        relative_attention.indexed_relative_attention = kernel
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="timed passes per variant")
    parser.add_argument("--segments", type=int, default=96, help="segments of 64 tokens per pass")
    add_common_arguments(parser)
    args = parser.parse_args()
    decoder, stream = scoring_decoder(args, TOKENS * args.segments + 1,
                                      f"scoring_attention_speed: --segments {args.segments}")
    checked = checked_log_probs(decoder, stream, min(args.segments, 16))
    worst = (checked["indexed"] - checked["reference"]).abs().max().item()
    times = {variant: [] for variant in VARIANTS}
    scoring_pass(decoder, stream, min(args.segments, 12))  # warm-up
    for _ in range(args.rounds):
        for variant in times:
            set_variant(decoder, variant)
            start = time.perf_counter()
            scoring_pass(decoder, stream, args.segments)
            times[variant].append((time.perf_counter() - start) / args.segments * 1e3)
    lines = [f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}",
             f"scoring 1 x 64 tokens a segment, mem_len 640, clamp_len 400, same_length, fp32, "
             f"{args.segments} segments a pass (the memory fills in the first 10), "
             f"vocabulary {len(decoder.dictionary)}",
             f"largest log-probability difference, indexed vs reference: {worst:.1e}",
             *rounds_table(times, "segment", 2)]
    ratio = min(times["reference"]) / min(times["indexed"])
    # Within a round the two ran back to back, so a drift of the machine between rounds cancels
    # in each round's own ratio.
    paired = sorted(r / i for r, i in zip(times["reference"], times["indexed"]))
    won = sum(r > 1.0 for r in paired)
    lines.append(f"indexed vs reference: {ratio:.3f}x faster (best rounds); round by round "
                 f"{statistics.median(paired):.3f}x (median of the {len(paired)} rounds' ratios, "
                 f"from {paired[0]:.3f}x to {paired[-1]:.3f}x), indexed faster in {won} of {len(paired)}")
    text = "\n".join(lines)
    print(text)
    write_results(text, args.out, "scoring-attention", ".txt")


if __name__ == "__main__":
    main()
