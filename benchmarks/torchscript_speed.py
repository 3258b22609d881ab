"""Tokens/s of an exported TorchScript scorer (truncated-bptt-export) over one binarized split, as
NVIDIA measures its TorchScript inference: one stream (batch 1), segment after segment with memory.

    python -m benchmarks.torchscript_speed scorer.ts data-bin/wikitext-103/test --device cuda

The split is read as fairseq-eval-lm reads it (the plugin's TokenStream: every line's tokens, then
eos). Prints the usual fairseq-style summary and one line ``RESULT {json}`` with tokens/s, the
base-2 loss (to compare with fairseq-eval-lm's) and the peak memory.
"""
import argparse
import json
import math
import resource
import time

import torch


def split_tokens(prefix: str) -> torch.Tensor:
    from fairseq.data import Dictionary

    from truncated_bptt.token_stream import TokenStream

    dictionary = Dictionary.load(prefix.rsplit("/", 1)[0] + "/dict.txt")
    return TokenStream.load(prefix, dictionary, name="split").tokens.long()


def score(scorer, tokens: torch.Tensor, segment: int, device: torch.device):
    """(seconds, summed log-prob in nats, scored targets) over ``[eos] + tokens`` in segments."""
    stream = torch.cat([tokens.new_tensor([scorer.eos]), tokens]).to(device).unsqueeze(0)
    mems, total, count = [], 0.0, 0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        for begin in range(0, stream.size(1) - 1, segment):
            targets = stream[:, begin + 1:begin + segment + 1]
            log_probs, mems = scorer(stream[:, begin:begin + targets.size(1)], targets, mems)
            total += float(log_probs.sum())
            count += targets.numel()
    sync()
    return time.perf_counter() - start, total, count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scorer", help="a .ts file written by truncated-bptt-export")
    parser.add_argument("split", help="fairseq-preprocess prefix, e.g. data-bin/wt103/test")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens-per-sample", type=int, default=64)
    parser.add_argument("--warmup-tokens", type=int, default=2048,
                        help="tokens scored first, untimed (kernel selection, allocator)")
    args = parser.parse_args()
    device = torch.device(args.device)
    scorer = torch.jit.load(args.scorer, map_location=device).eval()
    tokens = split_tokens(args.split)
    score(scorer, tokens[:args.warmup_tokens], args.tokens_per_sample, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds, total, count = score(scorer, tokens, args.tokens_per_sample, device)
    loss = -total / count / math.log(2)
    peak = (torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)
    print(f"Evaluated {count:,} tokens in {seconds:.1f}s ({count / seconds:.2f} tokens/s)")
    print(f"Loss (base 2): {loss:.4f}, Perplexity: {2 ** loss:.2f}")
    print("RESULT " + json.dumps({"tokens": count, "seconds": seconds, "tokens_per_s": count / seconds,
                                  "loss": loss, "peak_memory_gib": peak,
                                  "memory_what": "GPU max allocated" if device.type == "cuda"
                                  else "process peak RSS"}), flush=True)


if __name__ == "__main__":
    main()
