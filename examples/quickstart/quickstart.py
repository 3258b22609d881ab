"""Offline quickstart: what Transformer-XL's memory buys, in a few CPU minutes, no data needed.

    bash scripts/quickstart.sh                        # sets up .venv/py310, then runs this
    .venv/py310/bin/python -m examples.quickstart.quickstart [--out-dir runs/quickstart] [--fast]
                                                      # (from the repository root)

1. writes a synthetic corpus (``make_corpus.py``): documents of one of 8 topics, each a set of 4
   made-up words named in the title and mentioned every dozen tokens or so; which topic a
   document has is only known from earlier in the document;
2. ``fairseq-preprocess --only-source``;
3. ``fairseq-train`` of a tiny Transformer-XL (2 layers, d_model 64) on CPU with ``mem_len`` 128,
   progress shown live;
4. ``fairseq-train`` of the same model for the same updates with ``mem_len`` 0: the baseline that
   never had a memory (each 64-token training segment alone);
5. ``fairseq-eval-lm --output-word-probs`` on the test split in 16-token segments: the memory model
   at several ``mem_len`` (0 included), the baseline at ``mem_len`` 0;
6. prints the perplexities and, from the per-token scores, the loss on the topic words and on all
   other words, for each model; plots the training curves and perplexity vs ``mem_len``.

It passes when the memory model, evaluated with its longest memory, beats the baseline overall and
predicts the topic words at least ``REQUIRED_TOPIC_GAIN`` nats better per word than the baseline
does. (Comparing the memory model with itself at ``mem_len`` 0 would mostly measure the first tokens
of every segment, which it never saw without memory in training.) Otherwise it exits with status 1.
``--fast`` (or QUICKSTART_FAST=1) trains fewer updates and evaluates two memory lengths, for tests.
"""
import argparse
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List

from examples.fairseq_logs import parse_eval_lm, parse_record, parse_word_probs, read_training_log
from examples.mem_len_sweep import eval_lm_command, plot_sweep, write_csv
from examples.plot_training_curves import plot_training_curves
from examples.quickstart.make_corpus import is_topic_word, make_corpus, write_corpus

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USER_DIR = os.path.join(REPO, "truncated_bptt")
BIN = os.path.dirname(sys.executable)  # the venv's console scripts, next to its python

# The memory model must predict the topic words at least this many nats per word better than the
# baseline (0.5: the probability of the word that came 1.65 times higher). Knowing the topic takes a
# topic word from 1 of 32 to 1 of 4, 2.08 nats, but the baseline also finds the topic within its
# segment for many of them.
REQUIRED_TOPIC_GAIN = 0.5

# Model and training: small enough for a few CPU minutes. Training sees 64-token segments with 128
# tokens of memory, so it learns to look up to 192 tokens back.
TRAIN_TOKENS_PER_SAMPLE = 64
TRAIN_MEM_LEN = 128
EVAL_TOKENS_PER_SAMPLE = 16
EVAL_CLAMP_LEN = TRAIN_TOKENS_PER_SAMPLE + TRAIN_MEM_LEN  # longest distance seen in training

SETTINGS = {
    #            updates (each model), test mem_lens of the memory model
    "full": dict(max_update=1200, mem_lens=[0, 4, 8, 16, 32, 64, 128, 256]),
    "fast": dict(max_update=800, mem_lens=[0, 128]),
}


def train_command(data, save_dir, max_update, seed, mem_len=TRAIN_MEM_LEN):
    return [
        os.path.join(BIN, "fairseq-train"), data, "--user-dir", USER_DIR,
        "--task", "truncated_bptt_lm", "--tokens-per-sample", str(TRAIN_TOKENS_PER_SAMPLE),
        "--batch-size", "16",
        "--arch", "transformer_xl", "--n-layer", "2", "--d-model", "64", "--n-head", "4",
        "--d-head", "16", "--d-inner", "256", "--mem-len", str(mem_len), "--dropout", "0.0",
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


@dataclass
class Score:
    """One fairseq-eval-lm run: perplexity, and the mean loss (nats per word) on the topic words
    and on every other word (fairseq's ``</s>`` included)."""
    mem_len: int
    ppl: float
    loss: float  # base 2, as fairseq-eval-lm prints it
    topic_loss: float
    topic_words: int
    other_loss: float
    other_words: int

    def as_row(self) -> Dict[str, float]:
        return {"mem_len": self.mem_len, "loss": self.loss, "ppl": self.ppl, "topic_loss_nats": self.topic_loss,
                "other_loss_nats": self.other_loss}


def word_losses(output: str):
    """Mean negative log-probability (nats) of the topic words and of the other words, and their
    counts, from fairseq-eval-lm's ``--output-word-probs`` lines."""
    words = [w for sample in parse_word_probs(output).values() for w in sample]
    topic = [-lp for w, lp in words if is_topic_word(w)]
    other = [-lp for w, lp in words if not is_topic_word(w)]
    if not topic or not other:
        raise ValueError("fairseq-eval-lm printed no per-word scores of topic and other words")
    return sum(topic) / len(topic), len(topic), sum(other) / len(other), len(other)


def score(data, checkpoint, mem_len, env) -> Score:
    """The test split in 16-token segments with ``mem_len`` tokens of memory."""
    command = eval_lm_command(data, checkpoint, mem_len, EVAL_TOKENS_PER_SAMPLE,
                              clamp_len=EVAL_CLAMP_LEN, batch_size=8, user_dir=USER_DIR,
                              bin_dir=BIN, extra=["--cpu", "--output-word-probs"])
    output = run_quiet(command, env)
    summary = parse_eval_lm(output)
    return Score(mem_len, summary["ppl"], summary["loss"], *word_losses(output))


def check(memory: Score, baseline: Score, required: float = REQUIRED_TOPIC_GAIN):
    """``(ok, topic_gain)``: the memory model's advantage on the topic words (nats per word), and
    whether it reaches ``required`` while the memory model is also better overall."""
    gain = baseline.topic_loss - memory.topic_loss
    return gain >= required - 1e-9 and memory.ppl < baseline.ppl, gain


def train(label, data, save_dir, max_update, seed, mem_len, env):
    for stale in ("checkpoint_last.pt", "checkpoint_best.pt", "train.log"):
        if os.path.exists(os.path.join(save_dir, stale)):
            os.remove(os.path.join(save_dir, stale))  # always train from scratch
    os.makedirs(save_dir, exist_ok=True)
    command = train_command(data, save_dir, max_update, seed, mem_len)
    print(f"  {label}: {shlex.join(command)}")
    run_showing_progress(command, env)
    return os.path.join(save_dir, "checkpoint_last.pt")


def report(sweep: List[Score], baseline: Score) -> None:
    """The table of the three evaluations that matter, with the per-word losses."""
    def line(name, s: Score):
        print(f"    {name:<38}: {s.ppl:8.2f}   {s.topic_loss:5.2f} (p {math.exp(-s.topic_loss):.3f})"
              f"   {s.other_loss:5.2f}")

    print(f"\n  test split, {EVAL_TOKENS_PER_SAMPLE}-token segments ({sweep[0].topic_words:,} topic words, "
          f"{sweep[0].other_words:,} other tokens):")
    print(f"    {'model, memory at evaluation':<38}: perplexity   topic words: nats   other: nats")
    line("trained with mem_len 0, no memory", baseline)
    line(f"trained with mem_len {TRAIN_MEM_LEN}, no memory", sweep[0])
    line(f"trained with mem_len {TRAIN_MEM_LEN}, mem_len {sweep[-1].mem_len}", sweep[-1])
    print("    (p: the geometric-mean probability the model gave the topic word that came)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default=os.path.join(REPO, "runs", "quickstart"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fast", action="store_true", default=os.environ.get("QUICKSTART_FAST") == "1",
                        help="fewer updates and two memory lengths (for tests)")
    args = parser.parse_args(argv)
    settings = SETTINGS["fast" if args.fast else "full"]
    out = os.path.abspath(args.out_dir)
    text, data = os.path.join(out, "text"), os.path.join(out, "data-bin")
    save_dirs = {"memory": os.path.join(out, "checkpoints"), "baseline": os.path.join(out, "checkpoints_mem0")}
    env = cli_env()
    start = time.time()

    def step(message):
        print(f"[{time.time() - start:5.0f}s] {message}", flush=True)

    step(f"1/6 corpus -> {text}")
    corpus = make_corpus(seed=args.seed)
    write_corpus(text, corpus)
    print(f"  e.g. {corpus['train'][0]}\n       {corpus['train'][1][:100]} ...")

    step(f"2/6 fairseq-preprocess -> {data}")
    run_quiet([os.path.join(BIN, "fairseq-preprocess"), "--only-source", "--destdir", data,
               "--trainpref", os.path.join(text, "train.txt"),
               "--validpref", os.path.join(text, "valid.txt"),
               "--testpref", os.path.join(text, "test.txt"), "--workers", "1"], env)

    updates = settings["max_update"]
    step(f"3/6 fairseq-train with mem_len {TRAIN_MEM_LEN}, {updates} updates on CPU")
    memory_ckpt = train("memory", data, save_dirs["memory"], updates, args.seed, TRAIN_MEM_LEN, env)
    step(f"4/6 fairseq-train of the baseline: mem_len 0, {updates} updates")
    baseline_ckpt = train("baseline", data, save_dirs["baseline"], updates, args.seed, 0, env)

    step(f"5/6 fairseq-eval-lm on test, {EVAL_TOKENS_PER_SAMPLE}-token segments")
    sweep = []
    for mem_len in settings["mem_lens"]:
        sweep.append(score(data, memory_ckpt, mem_len, env))
        print(f"  memory model, mem_len {mem_len:>4}: perplexity {sweep[-1].ppl:.2f}")
    baseline = score(data, baseline_ckpt, 0, env)
    print(f"  baseline (trained with mem_len 0), mem_len    0: perplexity {baseline.ppl:.2f}")

    step("6/6 plots")
    write_csv([s.as_row() for s in sweep], os.path.join(out, "ppl_vs_mem_len.csv"))
    sweep_png = plot_sweep([s.as_row() for s in sweep], os.path.join(out, "ppl_vs_mem_len.png"),
                           title="Quickstart: test perplexity vs memory length",
                           train_mem_len=TRAIN_MEM_LEN, label=f"trained with mem_len {TRAIN_MEM_LEN}",
                           baseline=("trained with mem_len 0, no memory", baseline.ppl))
    curve_png = plot_training_curves(
        {name: read_training_log(os.path.join(d, "train.log")) for name, d in
         (("mem_len 128", save_dirs["memory"]), ("mem_len 0", save_dirs["baseline"]))},
        os.path.join(out, "training_curve.png"), title="Quickstart: tiny Transformer-XL on CPU")

    report(sweep, baseline)
    ok, gain = check(sweep[-1], baseline)
    print(f"  plots: {sweep_png}\n         {curve_png}")
    print(f"  done in {time.time() - start:.0f} s")
    verdict = (f"with mem_len {sweep[-1].mem_len} the memory model predicts the topic words "
               f"{gain:.2f} nats per word better than the model trained without memory, and its "
               f"perplexity is {100 * (1 - sweep[-1].ppl / baseline.ppl):.1f} % lower")
    if not ok:
        print(f"quickstart: FAILED: {verdict} (required: {REQUIRED_TOPIC_GAIN:.2f} nats better and a "
              "lower perplexity): the memory is not being used as it should", file=sys.stderr)
        return 1
    print(f"quickstart: OK: {verdict} (required: >= {REQUIRED_TOPIC_GAIN:.2f} nats)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
