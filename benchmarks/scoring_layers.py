"""One scoring segment through the layer stack, with and without the two CPU inference shortcuts.

The shortcuts: the layers' linear maps through weights packed for oneDNN
(:mod:`truncated_bptt.packed_weights`), and the attention mask written into the position scores
before the relative shift (:func:`truncated_bptt.relative_attention.position_mask`). This times the
layers of the benchmark model (4 layers, d_model 256, 4 heads x 64, d_inner 1024) on one segment of
the eval-lm benchmark (batch 1, 64 tokens, a full memory of 640, clamp_len 400, same_length), as an
inference pass runs them: the memory's keys/values and the position keys already cached, only the
segment's projected. The four variants run in turn within each round, so that a slow spell of the
machine hits them all; each variant's output is checked against the plain one first. Prints each
variant's median milliseconds per segment and its per-round speed ratio to the plain variant
(median over rounds), and writes the same to ``benchmarks/results/scoring-layers-<UTC time>.txt``.

    .venv/py310/bin/python -m benchmarks.scoring_layers [--threads 2] [--rounds 15]
"""
import argparse
import datetime
import os
import statistics
import time

import torch

from benchmarks.results_file import write_results
from truncated_bptt.packed_weights import can_pack
from truncated_bptt.relative_attention import (
    AttentionContext, attention_mask, position_encodings, position_mask,
)
from truncated_bptt.transformer_xl_layer import TransformerXLLayer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("plain", "packed layers", "mask before shift", "both")


class Segment:
    """The layers and one segment's inputs, as an inference pass holds them."""

    def __init__(self, args):
        torch.manual_seed(0)
        d, qlen, mlen = args.d, args.qlen, args.mem_len
        self.layers = [TransformerXLLayer(args.n_head, d, d // args.n_head, args.d_inner, 0.0, 0.0,
                                          untie_r=True).eval() for _ in range(args.n_layer)]
        for layer in self.layers:  # (u and v are left uninitialised by the layer; the model inits all)
            for name, param in layer.named_parameters():
                if not name.endswith("layer_norm.weight"):
                    torch.nn.init.normal_(param, std=0.02)
        self.h = torch.randn(1, qlen, d)
        encodings = position_encodings(mlen + qlen, d, args.clamp_len, distinct=True)
        masks = (qlen, mlen, True, mlen)
        self.contexts = {False: AttentionContext(encodings, attention_mask(*masks), None, None),
                         True: AttentionContext(encodings, attention_mask(*masks), None, None,
                                                position_mask(*masks))}
        self.position_keys = [torch.nn.functional.linear(encodings, layer.attn.r_net.weight)
                              for layer in self.layers]
        self.keys_values = [torch.randn(1, mlen + qlen, 2, args.n_head, d // args.n_head)
                            for _ in self.layers]
        self.packed = [layer.packed_weights() for layer in self.layers]

    @torch.no_grad()
    def run(self, variant: str) -> torch.Tensor:
        packed = variant in ("packed layers", "both")
        context = self.contexts[variant in ("mask before shift", "both")]
        h = self.h
        for i, layer in enumerate(self.layers):
            h = layer(h, context, keys_values=self.keys_values[i],
                      position_keys=self.position_keys[i], weights=self.packed[i] if packed else None)
        return h


def timed_rounds(segment: Segment, rounds: int, segments: int):
    """{variant: [ms per segment of each round]}, the variants interleaved within every round."""
    times = {variant: [] for variant in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            segment.run(variant)  # warm this variant's weights into the caches, as a pass does
            start = time.perf_counter()
            for _ in range(segments):
                segment.run(variant)
            times[variant].append((time.perf_counter() - start) / segments * 1e3)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--d", type=int, default=256, help="d_model = n_head x d_head")
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--d-inner", type=int, default=1024)
    parser.add_argument("--qlen", type=int, default=64)
    parser.add_argument("--mem-len", type=int, default=640)
    parser.add_argument("--clamp-len", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--segments", type=int, default=20, help="segments timed per variant and round")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    segment = Segment(args)
    if not can_pack(segment.h):
        raise SystemExit("scoring_layers: this torch has no oneDNN (mkldnn) for fp32 on CPU; "
                         "there is nothing packed to compare")
    plain = segment.run("plain")
    for variant in VARIANTS[1:]:
        torch.testing.assert_close(segment.run(variant), plain, rtol=1e-4, atol=1e-4)
    times = timed_rounds(segment, args.rounds, args.segments)
    lines = [f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}",
             f"{args.n_layer} layers, d_model {args.d}, d_inner {args.d_inner}; batch 1 x {args.qlen} "
             f"tokens, memory {args.mem_len}, clamp_len {args.clamp_len}, same_length; "
             f"{args.rounds} rounds x {args.segments} segments",
             f"{'variant':>18} {'median ms/segment':>18} {'speed vs plain (median of rounds)':>35}"]
    for variant in VARIANTS:
        ratio = statistics.median(p / t for p, t in zip(times["plain"], times[variant]))
        lines.append(f"{variant:>18} {statistics.median(times[variant]):>18.3f} {ratio:>34.3f}x")
    print("\n".join(lines))
    write_results("\n".join(lines), args.out, "scoring-layers", ".txt")


if __name__ == "__main__":
    main()
