"""The eval-lm benchmark's scoring configuration, for the single-purpose scoring scripts
(benchmarks/scoring_attention_speed.py, benchmarks/scoring_cache.py): the benchmark model of
benchmarks/compare.py (:func:`benchmarks.profile_model.build_auto`) scoring one stream of 64 tokens
a segment over mem_len 640, clamp_len 400, same_length, as in benchmarks/compare.py's eval-lm runs."""
import argparse
import os

import torch

from benchmarks.profile_model import build_auto

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENS, MEM_LEN, CLAMP_LEN = 64, 640, 400


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--threads``, ``--train-txt`` and ``--out`` (where the results file goes)."""
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-txt", default=None, help="as benchmarks/profile_model.py's")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))


def scoring_decoder(args: argparse.Namespace, tokens_needed: int, what: str):
    """(decoder in eval mode with the scoring memory options, stream ``[1, N]``) after setting
    ``args.threads``; exits with one line if the stream is shorter than ``tokens_needed``
    (``what``: the script and option that asked for them)."""
    torch.set_num_threads(args.threads)
    decoder, stream = build_auto(args.train_txt)
    stream = stream.reshape(1, -1)
    if stream.size(1) < tokens_needed:
        raise SystemExit(f"{what} needs {tokens_needed} tokens; the stream has {stream.size(1)}")
    decoder.set_memory_options(mem_len=MEM_LEN, clamp_len=CLAMP_LEN, same_length=True)
    decoder.eval()
    return decoder, stream
