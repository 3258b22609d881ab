"""Offline quickstart: watch Transformer-XL's memory at work in a few CPU minutes, no data needed.

    bash scripts/quickstart.sh                        # sets up .venv/py310, then runs this
    .venv/py310/bin/python -m examples.quickstart.quickstart [--out-dir runs/quickstart] [--fast]
                                                      # (from the repository root)

1. writes a synthetic corpus (``make_corpus.py``): documents whose topic words, announced in the
   title, recur for hundreds of tokens, far beyond one training segment;
2. ``fairseq-preprocess --only-source``;
3. ``fairseq-train`` of a tiny Transformer-XL (2 layers, d_model 64) on CPU, progress shown live;
4. ``fairseq-eval-lm`` on the test split, scoring 16-token segments with ``mem_len`` 0 (each segment
   alone) and with longer memories (``--model-overrides``);
5. prints the perplexities side by side, plots the training curve and perplexity vs ``mem_len``.

The longest memory must lower the perplexity by at least 20 % over ``mem_len 0``; otherwise the
memory is not doing its job and the script exits with status 1. ``--fast`` (or QUICKSTART_FAST=1)
trains fewer updates and evaluates two memory lengths only, for tests.
"""
import argparse
import os
import shlex
import subprocess
import sys
import time

from examples.fairseq_logs import parse_record, read_training_log
from examples.mem_len_sweep import plot_sweep, sweep, write_csv
from examples.plot_training_curves import plot_training_curves
from examples.quickstart.make_corpus import make_corpus, write_corpus

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USER_DIR = os.path.join(REPO, "truncated_bptt")
BIN = os.path.dirname(sys.executable)  # the venv's console scripts, next to its python

REQUIRED_DROP = 0.20  # the longest memory must give at least 20 % lower perplexity than none

# Model and training: small enough for a couple of CPU minutes. Training sees 64-token segments
# with 128 tokens of memory, so it learns to look up to 192 tokens back.
TRAIN_TOKENS_PER_SAMPLE = 64
TRAIN_MEM_LEN = 128
EVAL_TOKENS_PER_SAMPLE = 16
EVAL_CLAMP_LEN = TRAIN_TOKENS_PER_SAMPLE + TRAIN_MEM_LEN  # longest distance seen in training

SETTINGS = {
    #            updates, test mem_lens
    "full": dict(max_update=1200, mem_lens=[0, 4, 8, 16, 32, 64, 128, 256]),
    "fast": dict(max_update=400, mem_lens=[0, 128]),
}


def train_command(data, save_dir, max_update, seed):
    return [
        os.path.join(BIN, "fairseq-train"), data, "--user-dir", USER_DIR,
        "--task", "truncated_bptt_lm", "--tokens-per-sample", str(TRAIN_TOKENS_PER_SAMPLE),
        "--batch-size", "16",
        "--arch", "transformer_xl", "--n-layer", "2", "--d-model", "64", "--n-head", "4",
        "--d-head", "16", "--d-inner", "256", "--mem-len", str(TRAIN_MEM_LEN), "--dropout", "0.0",
        "--optimizer", "adam", "--lr", "0.003", "--clip-norm", "0.25",
        "--lr-scheduler", "cosine_warmup", "--warmup-updates", "100", "--eta-min", "0.0003",
        "--max-update", str(max_update), "--seed", str(seed), "--cpu",
        "--log-format", "simple", "--log-interval", "50",
        "--save-dir", save_dir, "--no-epoch-checkpoints",
        "--log-file", os.path.join(save_dir, "train.log"),
    ]


def cli_env():
    """Single-threaded, CPU-only, repository plugin first on the path."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"), CUDA_VISIBLE_DEVICES="",
               PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    return env


def run_quiet(command, env):
    proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"quickstart: {shlex.join(command)} failed:\n{proc.stdout[-3000:]}")
    return proc.stdout


def run_showing_progress(command, env):
    """Run fairseq-train, echoing its progress lines (training/validation records) as they come."""
    tail = []
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        for line in proc.stdout:
            tail = (tail + [line])[-60:]
            if parse_record(line) is not None:  # a training, validation or epoch record
                print("  " + line.split(" | ", 3)[-1].rstrip(), flush=True)
    if proc.returncode != 0:
        sys.exit(f"quickstart: {shlex.join(command)} failed:\n{''.join(tail)}")


def check_drop(ppl_no_memory: float, ppl_memory: float, required: float = REQUIRED_DROP):
    """``(ok, drop)``: the relative perplexity drop and whether it reaches ``required``."""
    drop = 1.0 - ppl_memory / ppl_no_memory
    return drop >= required - 1e-9, drop  # (1e-9: 1 - 24/30 is 0.1999... in floating point)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default=os.path.join(REPO, "runs", "quickstart"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fast", action="store_true", default=os.environ.get("QUICKSTART_FAST") == "1",
                        help="fewer updates and two memory lengths (for tests)")
    args = parser.parse_args(argv)
    settings = SETTINGS["fast" if args.fast else "full"]
    out = os.path.abspath(args.out_dir)
    text, data, save_dir = (os.path.join(out, d) for d in ("text", "data-bin", "checkpoints"))
    env = cli_env()
    start = time.time()

    def step(message):
        print(f"[{time.time() - start:5.0f}s] {message}", flush=True)

    step(f"1/5 corpus -> {text}")
    corpus = make_corpus(seed=args.seed)
    write_corpus(text, corpus)
    print(f"  e.g. {corpus['train'][0]}\n       {corpus['train'][1][:100]} ...")

    step(f"2/5 fairseq-preprocess -> {data}")
    run_quiet([os.path.join(BIN, "fairseq-preprocess"), "--only-source", "--destdir", data,
               "--trainpref", os.path.join(text, "train.txt"),
               "--validpref", os.path.join(text, "valid.txt"),
               "--testpref", os.path.join(text, "test.txt"), "--workers", "1"], env)

    step(f"3/5 fairseq-train, {settings['max_update']} updates on CPU -> {save_dir}")
    for stale in ("checkpoint_last.pt", "checkpoint_best.pt", "train.log"):
        if os.path.exists(os.path.join(save_dir, stale)):
            os.remove(os.path.join(save_dir, stale))  # always train from scratch
    os.makedirs(save_dir, exist_ok=True)
    command = train_command(data, save_dir, settings["max_update"], args.seed)
    print("  " + shlex.join(command))
    run_showing_progress(command, env)

    checkpoint = os.path.join(save_dir, "checkpoint_last.pt")
    step(f"4/5 fairseq-eval-lm on test, {EVAL_TOKENS_PER_SAMPLE}-token segments, "
         f"mem_len {settings['mem_lens']}")
    results = sweep(data, checkpoint, settings["mem_lens"], log=lambda m: print("  " + m),
                    env=env, tokens_per_sample=EVAL_TOKENS_PER_SAMPLE, clamp_len=EVAL_CLAMP_LEN,
                    batch_size=8, user_dir=USER_DIR, bin_dir=BIN, extra=["--cpu"])

    step("5/5 plots")
    write_csv(results, os.path.join(out, "ppl_vs_mem_len.csv"))
    sweep_png = plot_sweep(results, os.path.join(out, "ppl_vs_mem_len.png"),
                           title="Quickstart: test perplexity vs memory length",
                           train_mem_len=TRAIN_MEM_LEN)
    curve_png = plot_training_curves({"quickstart": read_training_log(os.path.join(save_dir, "train.log"))},
                                     os.path.join(out, "training_curve.png"),
                                     title="Quickstart: tiny Transformer-XL on CPU")

    none, longest = results[0], results[-1]
    ok, drop = check_drop(none["ppl"], longest["ppl"])
    print()
    print(f"  test perplexity, {EVAL_TOKENS_PER_SAMPLE}-token segments:")
    print(f"    mem_len {none['mem_len']:>4} (no memory)  : {none['ppl']:8.2f}")
    print(f"    mem_len {longest['mem_len']:>4} (memory)     : {longest['ppl']:8.2f}"
          f"   ({100 * drop:.1f} % lower)")
    print(f"  plots: {sweep_png}\n         {curve_png}")
    print(f"  done in {time.time() - start:.0f} s")
    if not ok:
        print(f"quickstart: FAILED: mem_len {longest['mem_len']} lowers perplexity by only "
              f"{100 * drop:.1f} %, less than the {100 * REQUIRED_DROP:.0f} % expected: the memory "
              "is not being used as it should", file=sys.stderr)
        return 1
    print(f"quickstart: OK: the memory lowers perplexity by {100 * drop:.1f} % "
          f"(>= {100 * REQUIRED_DROP:.0f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
