"""Character-level corpus for truncated_bptt_lm from a local copy of enwik8 or text8 (or any file):
the standard split, one token per byte, binarized with fairseq-preprocess.

    python examples/char_level/prepare.py enwik8.zip --destdir data-bin/enwik8
    python examples/char_level/prepare.py text8.zip --destdir data-bin/text8

Nothing is downloaded: pass the file itself or its zip (the archive's single member is read).

Split (as the Transformer-XL authors' prep_enwik8.py / prep_text8.py): the last ``2 x --heldout``
bytes (default 5,000,000 each) are validation then test, the rest is training; for the 100,000,000
bytes of enwik8 or text8 that is the standard 90M / 5M / 5M.

Tokens: every byte is one token, written as the plugin's ``byte_tokens`` BPE writes it (the tokens
of fairseq's byte-level BPE: printable Latin-1 bytes as themselves, space as ``▁``, other bytes as
characters U+0100 + byte); a newline byte ends the line, so it becomes the ``</s>`` that
fairseq-preprocess appends. Every byte of a split is therefore scored exactly once (plus one
``</s>`` ending the split when its last byte is not a newline), and fairseq-eval-lm's
"Loss (base 2)" is bits per character. fairseq-interactive / -generate read and print plain text
with ``--bpe byte_tokens``.

The dictionary holds every byte value found in any of the three splits, as the authors' vocabulary
does, so no test byte is ``<unk>``.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Dict, Sequence

import numpy as np

from truncated_bptt.byte_tokens import SYMBOLS, encode_bytes

NEWLINE = 10
STANDARD_SIZE = 100_000_000


def read_corpus(path: str) -> bytes:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            members = [m for m in z.namelist() if not m.endswith("/")]
            if len(members) != 1:
                sys.exit(f"prepare.py: {path} holds {len(members)} files; extract the corpus and "
                         "pass the file itself")
            return z.read(members[0])
    with open(path, "rb") as f:
        return f.read()


def split_corpus(data: bytes, heldout: int) -> Dict[str, bytes]:
    if len(data) <= 2 * heldout:
        sys.exit(f"prepare.py: the corpus has {len(data):,} bytes, not more than 2 x --heldout "
                 f"{heldout:,}: lower --heldout")
    if len(data) != STANDARD_SIZE:
        print(f"prepare.py: note: {len(data):,} bytes, not the 100,000,000 of enwik8/text8; the "
              f"last 2 x {heldout:,} bytes are still validation and test")
    return {"train": data[:-2 * heldout], "valid": data[-2 * heldout:-heldout],
            "test": data[-heldout:]}


def write_tokens(data: bytes, path: str) -> int:
    """One line per newline-separated chunk of ``data``, one space-separated token per byte;
    returns the number of tokens fairseq will read (bytes + a final </s> if none ends the data)."""
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()  # the last newline already ends the last line
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(encode_bytes(line) + "\n")
    return len(data) + (0 if data.endswith(b"\n") else 1)


def write_dictionary(splits: Dict[str, bytes], path: str) -> int:
    """``dict.txt`` of every byte value in any split but newline (that is </s>), most frequent
    first."""
    counts = sum(np.bincount(np.frombuffer(d, dtype=np.uint8), minlength=256) for d in splits.values())
    counts[NEWLINE] = 0
    symbols = SYMBOLS
    order = sorted((b for b in range(256) if counts[b] > 0), key=lambda b: (-counts[b], b))
    with open(path, "w", encoding="utf-8") as f:
        for b in order:
            f.write(f"{symbols[b]} {counts[b]}\n")
    return len(order)


def fairseq_preprocess(texts: Dict[str, str], srcdict: str, destdir: str, workers: int) -> None:
    tool = os.path.join(os.path.dirname(sys.executable), "fairseq-preprocess")
    cmd = [tool if os.path.exists(tool) else "fairseq-preprocess", "--only-source",
           "--srcdict", srcdict, "--destdir", destdir, "--workers", str(workers)]
    for split, path in texts.items():
        cmd += [f"--{split}pref", path]
    print("prepare.py:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: Sequence[str] = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="enwik8 or text8 (the file or its .zip), or any other file")
    p.add_argument("--destdir", required=True, help="output directory (fairseq data directory)")
    p.add_argument("--heldout", type=int, default=5_000_000,
                   help="bytes of validation and of test, taken from the end (default 5,000,000)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="fairseq-preprocess processes")
    args = p.parse_args(argv)
    if not os.path.isfile(args.input):
        p.error(f"{args.input}: no such file (nothing is downloaded: pass a local copy)")

    splits = split_corpus(read_corpus(args.input), args.heldout)
    os.makedirs(args.destdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="chars-", dir=args.destdir)
    try:
        texts = {}
        for split, data in splits.items():
            texts[split] = os.path.join(work, f"{split}.txt")
            n = write_tokens(data, texts[split])
            print(f"prepare.py: {split}: {len(data):,} bytes -> {n:,} tokens")
        srcdict = os.path.join(work, "dict.txt")
        print(f"prepare.py: dictionary of {write_dictionary(splits, srcdict)} byte values "
              "(+ fairseq's 4 specials; newline is </s>)")
        fairseq_preprocess(texts, srcdict, args.destdir, args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"prepare.py: done: {args.destdir} (bits per character = fairseq-eval-lm's "
          "'Loss (base 2)'; decode generated text with --bpe byte_tokens)")


if __name__ == "__main__":
    main()
