"""Subword corpus for truncated_bptt_lm: train a sentencepiece model on your text, encode the
splits with it, and binarize them with fairseq-preprocess.

    python examples/subword/prepare.py --train train.txt --valid valid.txt --test test.txt \\
        --destdir data-bin/mycorpus --vocab-size 32000 --model-type unigram

Input: plain text, one line per sentence or paragraph (any language and script; sentencepiece
needs no pre-tokenization). Output in ``--destdir``: the binarized splits, ``dict.txt`` and the
sentencepiece model ``spm.model`` (+ ``spm.vocab``), which fairseq-interactive / -generate decode
with (``--bpe sentencepiece --sentencepiece-model DESTDIR/spm.model``).

The dictionary holds every piece of the sentencepiece vocabulary (most frequent in the training
split first), so no piece of the validation or test text becomes ``<unk>``: only characters that
sentencepiece itself cannot cover (``--character-coverage``) do, and they never carry a word's
leading ``▁``, so ``fairseq-eval-lm --word-pieces sentencepiece`` counts words exactly.

For corpora too large to binarize in one go: ``--encoded-dir DIR --skip-binarize`` writes the
encoded text and ``dict.txt``, then ``examples/large_corpus/shard_and_binarize.py --train
DIR/train.txt --srcdict DESTDIR/dict.txt ...`` binarizes it in shards, in parallel.
"""
import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Sequence

SPLITS = ("train", "valid", "test")
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # never written into dict.txt
BATCH_LINES = 10000


def parse_args(argv: Sequence[str] = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for split in SPLITS:
        p.add_argument(f"--{split}", required=split == "train", help=f"{split} text file")
    p.add_argument("--destdir", required=True, help="output directory (fairseq data directory)")
    p.add_argument("--vocab-size", type=int, default=32000, help="sentencepiece vocabulary size")
    p.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram")
    p.add_argument("--character-coverage", type=float, default=1.0,
                   help="share of characters sentencepiece must cover (0.9995 is its advice for "
                        "languages with very many characters, e.g. Chinese or Japanese)")
    p.add_argument("--input-sentence-size", type=int, default=10_000_000,
                   help="train sentencepiece on at most this many lines, sampled (0: all)")
    p.add_argument("--spm-model", help="use this existing sentencepiece model instead of training one")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="threads for sentencepiece and processes for fairseq-preprocess")
    p.add_argument("--encoded-dir", help="keep the encoded text here (default: a temporary directory)")
    p.add_argument("--skip-binarize", action="store_true",
                   help="stop after encoding (with --encoded-dir): e.g. to binarize in shards")
    args = p.parse_args(argv)
    for split in SPLITS:
        path = getattr(args, split)
        if path is not None and not os.path.isfile(path):
            p.error(f"--{split} {path}: no such file")
    if args.skip_binarize and not args.encoded_dir:
        p.error("--skip-binarize needs --encoded-dir (where the encoded text is kept)")
    return args


def train_sentencepiece(args, model_prefix: str) -> str:
    import sentencepiece as spm

    try:
        spm.SentencePieceTrainer.train(
            input=args.train, model_prefix=model_prefix, vocab_size=args.vocab_size,
            model_type=args.model_type, character_coverage=args.character_coverage,
            input_sentence_size=args.input_sentence_size, shuffle_input_sentence=True,
            num_threads=args.workers, bos_id=-1, eos_id=-1, minloglevel=1,
        )
    except RuntimeError as e:  # sentencepiece's own message is a C++ assertion
        if "Vocabulary size too high" in str(e):
            sys.exit(f"prepare.py: --vocab-size {args.vocab_size} is more pieces than "
                     f"{args.train} can give ({str(e).split('<=')[-1].strip(' .')} at most): "
                     "lower --vocab-size")
        raise
    return model_prefix + ".model"


def piece_table(sp) -> List[str]:
    """The symbol written for each sentencepiece id: the piece, or ``<unk>`` for unknown text."""
    return ["<unk>" if sp.is_unknown(i) else sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def encode_file(sp, pieces: List[str], src: str, dest: str, workers: int,
                counts: collections.Counter = None) -> int:
    """Write ``src`` as space-separated pieces, line by line, to ``dest``; return the piece count
    (``counts`` gets each id's frequency)."""
    total = 0
    with open(src, encoding="utf-8", errors="replace") as fin, \
            open(dest, "w", encoding="utf-8") as fout:
        while True:
            lines = [line.rstrip("\n") for _, line in zip(range(BATCH_LINES), fin)]
            if not lines:
                return total
            for ids in sp.encode(lines, out_type=int, num_threads=workers):
                fout.write(" ".join(pieces[i] for i in ids) + "\n")
                total += len(ids)
                if counts is not None:
                    counts.update(ids)


def write_dictionary(sp, pieces: List[str], counts: collections.Counter, path: str) -> int:
    """fairseq ``dict.txt``: every normal piece, most frequent in train first (ties: spm order)."""
    ids = [i for i in range(sp.get_piece_size())
           if not (sp.is_unknown(i) or sp.is_control(i)) and pieces[i] not in FAIRSEQ_SPECIALS]
    ids.sort(key=lambda i: (-counts[i], i))
    with open(path, "w", encoding="utf-8") as f:
        for i in ids:
            f.write(f"{pieces[i]} {counts[i]}\n")
    return len(ids)


def fairseq_preprocess(args, encoded: Dict[str, str], srcdict: str) -> None:
    tool = os.path.join(os.path.dirname(sys.executable), "fairseq-preprocess")
    cmd = [tool if os.path.exists(tool) else "fairseq-preprocess", "--only-source",
           "--srcdict", srcdict, "--destdir", args.destdir, "--workers", str(args.workers)]
    for split, path in encoded.items():
        cmd += [f"--{split}pref", path]
    print("prepare.py:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: Sequence[str] = None):
    args = parse_args(argv)
    import sentencepiece as spm

    os.makedirs(args.destdir, exist_ok=True)
    spm_model = os.path.join(args.destdir, "spm.model")
    if args.spm_model:
        shutil.copyfile(args.spm_model, spm_model)
    else:
        train_sentencepiece(args, os.path.join(args.destdir, "spm"))
        print(f"prepare.py: trained {args.model_type} sentencepiece model {spm_model}")
    sp = spm.SentencePieceProcessor(model_file=spm_model)
    pieces = piece_table(sp)

    work = args.encoded_dir or tempfile.mkdtemp(prefix="spm-encoded-", dir=args.destdir)
    os.makedirs(work, exist_ok=True)
    try:
        counts, encoded = collections.Counter(), {}
        for split in SPLITS:
            src = getattr(args, split)
            if src is None:
                continue
            encoded[split] = os.path.join(work, f"{split}.txt")
            n = encode_file(sp, pieces, src, encoded[split], args.workers,
                            counts if split == "train" else None)
            print(f"prepare.py: {split}: {n:,} pieces -> {encoded[split]}")
        srcdict = os.path.join(work, "dict.txt")
        size = write_dictionary(sp, pieces, counts, srcdict)
        shutil.copyfile(srcdict, os.path.join(args.destdir, "dict.txt"))
        print(f"prepare.py: dictionary of {size:,} pieces (+ fairseq's 4 specials)")
        if not args.skip_binarize:
            fairseq_preprocess(args, encoded, srcdict)
    finally:
        if not args.encoded_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"prepare.py: done: {args.destdir} (decode with --bpe sentencepiece "
          f"--sentencepiece-model {spm_model}; per-word figures: fairseq-eval-lm ... "
          "--word-pieces sentencepiece)")


if __name__ == "__main__":
    main()
