"""Training steps with and without the tied table's single autograd node (truncated_bptt/tied_table.py).

The benchmark configuration of benchmarks/compare.py (4 layers, d_model 256, WikiText-2's
vocabulary, cutoffs 2000,10000, tied weights), 8 x 128 tokens with mem_len 128, fp32 on CPU: the
decoder's forward, the adaptive_cross_entropy loss, the backward. "plain" lets the embedding and the
softmax each use the table through autograd (the decoder's ``_embed`` bypassed, as in
tests/test_tied_table.py's reference); "one node" is the decoder as it is (one node for the table,
the softmax's cluster products writing their weight gradients into its gradient). The two alternate within
every round, so a drift of the machine reaches both. Gradients are checked equal first. Prints ms per
step and the ratio, and writes them to ``benchmarks/results/tied-table-<UTC time>.txt``:

    .venv/py310/bin/python -m benchmarks.tied_table_speed [--rounds 8] [--steps 4]
"""
import argparse
import datetime
import os
import time

import torch

from benchmarks.profile_model import build_auto
from benchmarks.results_file import rounds_table, write_results
from truncated_bptt.adaptive_cross_entropy_criterion import AdaptiveCrossEntropyCriterion
from truncated_bptt.cpu_heap import keep_freed_memory
from truncated_bptt.tied_table import output_weights_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEGMENTS = 14  # the stream holds 16 segments of 128 tokens; steps cycle over the first 14


class _Task:
    def __init__(self, dictionary):
        self.target_dictionary = dictionary


class _Model(torch.nn.Module):
    """What the criterion sees of fairseq's model: the decoder and the targets."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def get_targets(self, sample, net_output):
        return sample["target"]


def training_step(model, criterion, stream, i: int):
    i %= SEGMENTS
    src, tgt = stream[:, i * 128:(i + 1) * 128], stream[:, i * 128 + 1:(i + 1) * 128 + 1]
    net_output = model.decoder(src, memory_key="train", segment_index=i)
    loss, _ = criterion.compute_loss(model, net_output, {"target": tgt})
    loss.backward()
    return net_output


def set_variant(decoder, variant: str):
    if variant == "plain":
        decoder._embed = lambda tokens: (decoder.embed(tokens), None)
    else:
        decoder.__dict__.pop("_embed", None)


def gradients(model, criterion, stream, variant):
    set_variant(model.decoder, variant)
    model.decoder.reset_stream_memory()
    model.zero_grad(set_to_none=True)
    training_step(model, criterion, stream, 0)
    net_output = training_step(model, criterion, stream, 1)
    assert (output_weights_of(net_output) is None) == (variant == "plain"), "the variant did not run"
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant and round")
    parser.add_argument("--train-txt", default=None, help="as benchmarks/profile_model.py's")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    decoder, stream = build_auto(args.train_txt)
    model = _Model(decoder)
    criterion = AdaptiveCrossEntropyCriterion(_Task(decoder.dictionary), sentence_avg=False)
    keep_freed_memory()  # as the task does at fairseq-train's first CPU step
    model.train()
    plain, node = (gradients(model, criterion, stream, v) for v in ("plain", "one node"))
    worst = max(((plain[n] - node[n]).abs().max() / plain[n].abs().max().clamp_min(1e-30)).item()
                for n in plain)
    times = {"plain": [], "one node": []}
    for i in range(3):  # warm-up
        training_step(model, criterion, stream, i)
        model.zero_grad(set_to_none=True)
    for _ in range(args.rounds):
        for variant in times:
            set_variant(decoder, variant)
            start = time.perf_counter()
            for i in range(args.steps):
                training_step(model, criterion, stream, i)
                model.zero_grad(set_to_none=True)
            times[variant].append((time.perf_counter() - start) / args.steps * 1e3)
    lines = [f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}",
             "training step 8 x 128 tokens, mem_len 128, fp32, WikiText-2 vocabulary (33,278 + specials), "
             "tied table 33280 x 256",
             f"largest gradient difference, one node vs plain, relative to the tensor's largest entry: {worst:.1e}",
             *rounds_table(times, "step", 1)]
    ratio = min(times["plain"]) / min(times["one node"])
    lines.append(f"one node vs plain (best rounds): {ratio:.3f}x faster")
    text = "\n".join(lines)
    print(text)
    write_results(text, args.out, "tied-table", ".txt")


if __name__ == "__main__":
    main()
