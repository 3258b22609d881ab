"""Split one large training text into shards and binarize them in parallel, with one dictionary,
for truncated_bptt_lm's sharded data (``data-bin/big/shard0:data-bin/big/shard1:...``).

    python examples/large_corpus/shard_and_binarize.py --train big.txt --valid valid.txt \\
        --test test.txt --destdir data-bin/big --shards 16 --jobs 8

Output in ``--destdir``: ``dict.txt`` (built from the whole training text by fairseq-preprocess
--dict-only, or the one given with ``--srcdict``) and ``shard0`` ... ``shardN-1``, each a
fairseq-preprocess directory with that dictionary and a contiguous piece of the training text,
cut at line ends into pieces of about equal size. The validation and test splits go to
``shard0`` only: truncated_bptt_lm validates and evaluates on the first directory.

fairseq-train then reads one shard per epoch, in order, wrapping around (epoch e reads shard
(e - 1) mod N), so ``--max-epoch N`` is one pass over the whole corpus; every epoch cuts its shard
into the usual streams, and a mid-epoch checkpoint resumes in the same shard at the same place.
The script prints the ``shard0:shard1:...`` path to train on.
"""
import argparse
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import List, Sequence, Tuple

COPY_CHUNK = 64 << 20


def parse_args(argv: Sequence[str] = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", required=True, help="the training text, one line per paragraph")
    p.add_argument("--valid", help="validation text (binarized into shard0)")
    p.add_argument("--test", help="test text (binarized into shard0)")
    p.add_argument("--destdir", required=True)
    p.add_argument("--shards", type=int, required=True, help="number of training shards")
    cpus = os.cpu_count() or 1
    p.add_argument("--jobs", type=int, default=None,
                   help="shards binarized at once (default: as many as cores, at most --shards)")
    p.add_argument("--workers-per-job", type=int, default=1,
                   help="fairseq-preprocess --workers of each job")
    p.add_argument("--srcdict", help="an existing dict.txt (e.g. examples/subword/prepare.py's)")
    p.add_argument("--thresholdsrc", type=int, default=0,
                   help="building the dictionary: map words seen at most this often to <unk>")
    p.add_argument("--nwordssrc", type=int, default=-1,
                   help="building the dictionary: keep only the most frequent words")
    p.add_argument("--keep-text", action="store_true", help="keep the shards' text files")
    args = p.parse_args(argv)
    for name in ("train", "valid", "test", "srcdict"):
        path = getattr(args, name)
        if path is not None and not os.path.isfile(path):
            p.error(f"--{name} {path}: no such file")
    if args.shards < 1:
        p.error("--shards must be at least 1")
    args.jobs = max(1, min(args.jobs or cpus, args.shards))
    return args


def fairseq_preprocess(*options: str) -> List[str]:
    tool = os.path.join(os.path.dirname(sys.executable), "fairseq-preprocess")
    return [tool if os.path.exists(tool) else "fairseq-preprocess", "--only-source", *options]


def line_aligned_ranges(path: str, shards: int) -> List[Tuple[int, int]]:
    """``shards`` byte ranges [start, end) of ``path`` of about equal size, each cut after a
    newline, covering the file; without reading it whole."""
    size = os.path.getsize(path)
    cuts = [0]
    with open(path, "rb") as f:
        for k in range(1, shards):
            f.seek(max(k * size // shards - 1, cuts[-1]))
            f.readline()  # to the end of the line the cut falls in
            cuts.append(f.tell())
    cuts.append(size)
    ranges = list(zip(cuts[:-1], cuts[1:]))
    if any(end <= start for start, end in ranges):
        sys.exit(f"shard_and_binarize.py: {path} has too few lines for {shards} shards of about "
                 f"{size // shards:,} bytes: use fewer --shards")
    return ranges


def copy_range(src: str, start: int, end: int, dest: str) -> None:
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        fin.seek(start)
        left = end - start
        while left > 0:
            chunk = fin.read(min(COPY_CHUNK, left))
            fout.write(chunk)
            left -= len(chunk)


def build_dictionary(args) -> str:
    """``DESTDIR/dict.txt``: copied from --srcdict, or counted over the whole training text."""
    path = os.path.join(args.destdir, "dict.txt")
    if args.srcdict:
        shutil.copyfile(args.srcdict, path)
        return path
    cmd = fairseq_preprocess("--trainpref", args.train, "--dict-only", "--destdir", args.destdir,
                             "--thresholdsrc", str(args.thresholdsrc), "--nwordssrc",
                             str(args.nwordssrc), "--workers", str(args.jobs * args.workers_per_job))
    print("shard_and_binarize.py: building the dictionary:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return path


def binarize_shard(args, k: int, text: str, shard_dir: str, srcdict: str) -> Tuple[int, str]:
    options = ["--srcdict", srcdict, "--trainpref", text, "--destdir", shard_dir,
               "--workers", str(args.workers_per_job)]
    if k == 0:
        options += [x for name in ("valid", "test") if getattr(args, name)
                    for x in (f"--{name}pref", getattr(args, name))]
    os.makedirs(shard_dir, exist_ok=True)
    log_path = os.path.join(shard_dir, "binarize.log")
    with open(log_path, "w") as log:
        proc = subprocess.run(fairseq_preprocess(*options), stdout=log, stderr=subprocess.STDOUT)
    return proc.returncode, log_path


def main(argv: Sequence[str] = None):
    args = parse_args(argv)
    os.makedirs(args.destdir, exist_ok=True)
    srcdict = build_dictionary(args)
    width = len(str(args.shards - 1))
    shard_dirs = [os.path.join(args.destdir, f"shard{k:0{width}d}") for k in range(args.shards)]
    text_dir = os.path.join(args.destdir, "text")
    os.makedirs(text_dir, exist_ok=True)
    texts = []
    for k, (start, end) in enumerate(line_aligned_ranges(args.train, args.shards)):
        texts.append(os.path.join(text_dir, f"train.shard{k:0{width}d}.txt"))
        copy_range(args.train, start, end, texts[-1])
    print(f"shard_and_binarize.py: binarizing {args.shards} shards, {args.jobs} at a time",
          flush=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda k: binarize_shard(args, k, texts[k], shard_dirs[k], srcdict),
                                range(args.shards)))
    failed = [log for code, log in results if code != 0]
    if failed:
        sys.exit(f"shard_and_binarize.py: fairseq-preprocess failed for {len(failed)} shard(s); "
                 f"see {', '.join(failed)}")
    if not args.keep_text:
        shutil.rmtree(text_dir)
    print(f"shard_and_binarize.py: done: train on {':'.join(shard_dirs)}")


if __name__ == "__main__":
    main()
