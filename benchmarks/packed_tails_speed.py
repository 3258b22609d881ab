"""Scoring with the softmax's tail clusters packed for oneDNN or plain, by the rows of a softmax call.

The eval-lm benchmark's configuration (benchmarks/scoring_setup.py: benchmarks/compare.py's model,
one stream, 64 tokens a segment, mem_len 640, clamp_len 400, same_length, fp32) scores the first
``--tokens`` tokens of the stream as fairseq-eval-lm does, ``k`` segments a step (64 x k rows a
softmax call), for k = 1, 2, 4 and 8. At every k two variants of the oneDNN-packed softmax weights
(truncated_bptt/packed_weights.py) alternate within every round, so a drift of the machine reaches
both: "all packed" (head and tail clusters) and "head packed" (the tail clusters on their plain
weights). Each round checks that its variant's weights were the ones used and that both variants'
scores agree. Prints ms per 1,000 tokens and the memory each variant's packed copy holds, and writes
them to ``benchmarks/results/packed-tails-<UTC time>.txt``:

    .venv/py310/bin/python -m benchmarks.packed_tails_speed [--rounds 5] [--tokens 4096]
"""
import argparse
import datetime
import os
import time

import torch

from benchmarks.results_file import rounds_table, write_results
from benchmarks.scoring_setup import CLAMP_LEN, MEM_LEN, TOKENS, add_common_arguments, scoring_decoder
from truncated_bptt.packed_weights import PACK_TAILS_MAX_ROWS, PackedSoftmax

VARIANTS = {"all packed": True, "head packed": False}


@torch.no_grad()
def score_pass(decoder, stream: torch.Tensor, tokens: int, segments_per_step: int) -> torch.Tensor:
    """log p of the first ``tokens`` targets, ``segments_per_step`` segments of TOKENS a step."""
    step = TOKENS * segments_per_step
    scores = []
    for i, start in enumerate(range(0, tokens, step)):
        src, tgt = stream[:, start:start + step], stream[:, start + 1:start + step + 1]
        features, _ = decoder(src, memory_key="speed", segment_index=i * segments_per_step,
                              segment_length=TOKENS)
        scores.append(decoder.target_log_probs(features, tgt))
    return torch.cat(scores, dim=1)


def use_variant(decoder, pack_tails: bool) -> PackedSoftmax:
    """Give the decoder this cache epoch's packed softmax of the variant (it keeps it for the epoch)."""
    packed = PackedSoftmax(decoder._cache_epoch, decoder.softmax.packed_clusters(pack_tails))
    decoder._packed_softmax = packed
    return packed


def timed_pass(decoder, stream, tokens: int, k: int, pack_tails: bool):
    """(ms per 1,000 tokens, scores) of one pass with the variant's weights, checked to be used."""
    packed = use_variant(decoder, pack_tails)
    start = time.perf_counter()
    scores = score_pass(decoder, stream, tokens, k)
    elapsed = time.perf_counter() - start
    if decoder._packed_softmax is not packed or packed.tails_packed != pack_tails:
        raise RuntimeError("the decoder did not score with the variant's packed weights")
    return elapsed / tokens * 1e6, scores


def copy_megabytes(decoder, pack_tails: bool) -> float:
    """Memory of the packed weights themselves (the plain tails are views of the parameters)."""
    clusters = decoder.softmax.packed_clusters(pack_tails)
    return sum(w.numel() * w.element_size() for w, _, _ in clusters if w.is_mkldnn) / 1e6


def measure(decoder, stream, tokens: int, rounds: int, ks) -> list:
    lines = []
    for k in ks:
        times = {v: [] for v in VARIANTS}
        for r in range(rounds + 1):  # round 0 warms up
            scores = {}
            for variant, pack_tails in VARIANTS.items():
                ms, scores[variant] = timed_pass(decoder, stream, tokens, k, pack_tails)
                if r > 0:
                    times[variant].append(ms)
            torch.testing.assert_close(scores["head packed"], scores["all packed"], rtol=1e-5, atol=1e-5)
        ratio = min(times["head packed"]) / min(times["all packed"])
        lines += [f"{k} segment(s) per step ({TOKENS * k} rows a softmax call):",
                  *rounds_table(times, "1k tokens", 2),
                  f"head packed / all packed (best rounds): {ratio:.3f}"]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per k (after one warm-up)")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens scored per pass")
    parser.add_argument("--segments-per-step", default="1,2,4,8", help="comma-separated k")
    add_common_arguments(parser)
    args = parser.parse_args()
    ks = [int(k) for k in args.segments_per_step.split(",")]
    decoder, stream = scoring_decoder(args, args.tokens + 1, f"packed_tails_speed: --tokens {args.tokens}")
    lines = [f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}",
             f"scoring 1 stream, {args.tokens} tokens a pass, segments of {TOKENS} tokens, mem_len "
             f"{MEM_LEN}, clamp_len {CLAMP_LEN}, same_length, fp32, {len(decoder.layers)} layers, "
             f"vocabulary {len(decoder.dictionary)}, clusters {decoder.softmax.cluster_sizes()}",
             "packed copy: " + ", ".join(f"{v} {copy_megabytes(decoder, p):.1f} MB" for v, p in VARIANTS.items()),
             f"(the decoder packs the tails when a cache epoch's first call has <= {PACK_TAILS_MAX_ROWS} rows)",
             *measure(decoder, stream, args.tokens, args.rounds, ks)]
    text = "\n".join(lines)
    print(text)
    write_results(text, args.out, "packed-tails", ".txt")


if __name__ == "__main__":
    main()
