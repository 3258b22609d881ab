"""Perplexity versus memory length: fairseq-eval-lm at several ``mem_len`` (CSV + PNG).

    python -m examples.mem_len_sweep data-bin/wikitext-103 checkpoints/wt103_base/checkpoint_best.pt \\
        --mem-lens 0 64 160 320 640 --tokens-per-sample 64 --clamp-len 400 --same-length \\
        --out-dir runs/sweep_base

(from the repository root: ``examples`` is a package there).

Each point is one fairseq-eval-lm run of the same checkpoint with
``--model-overrides "{'mem_len': M, 'clamp_len': C, 'same_length': S}"`` (``same_length`` only
where ``M > 0``: it means "every query sees M keys"), scoring every token of ``--gen-subset`` once.
Extra fairseq-eval-lm options go after ``--``, e.g. ``-- --fp16``.
"""
import argparse
import csv
import os
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from examples.fairseq_logs import parse_eval_lm
from examples.figures import finish_and_save, memory_length_axis

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_USER_DIR = os.path.join(REPO, "truncated_bptt")


def eval_lm_command(data: str, checkpoint: str, mem_len: int, tokens_per_sample: int,
                    clamp_len: int = -1, same_length: bool = False, batch_size: int = 1,
                    gen_subset: str = "test", user_dir: str = DEFAULT_USER_DIR,
                    bin_dir: Optional[str] = None, extra: Sequence[str] = ()) -> List[str]:
    """The fairseq-eval-lm command line scoring ``gen_subset`` with memory length ``mem_len``."""
    overrides = {"mem_len": int(mem_len), "clamp_len": int(clamp_len)}
    if same_length and mem_len > 0:
        overrides["same_length"] = True
    tool = os.path.join(bin_dir or os.path.dirname(sys.executable), "fairseq-eval-lm")
    return [
        tool, data, "--user-dir", user_dir, "--task", "truncated_bptt_lm", "--path", checkpoint,
        "--gen-subset", gen_subset, "--batch-size", str(batch_size),
        "--tokens-per-sample", str(tokens_per_sample), "--model-overrides", repr(overrides),
        *extra,
    ]


def run_eval_lm(command: List[str], env: Optional[Dict[str, str]] = None) -> Dict[str, float]:
    """Run one fairseq-eval-lm command; its ``{"loss", "ppl"}``. Fails with its output's tail."""
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}\nexited {proc.returncode}:\n{proc.stdout[-3000:]}")
    return parse_eval_lm(proc.stdout)


def sweep(data: str, checkpoint: str, mem_lens: Sequence[int], log=print, env=None,
          **command_args) -> List[Dict[str, float]]:
    """``[{"mem_len": M, "loss": ..., "ppl": ...}, ...]`` for each M of ``mem_lens``."""
    results = []
    for mem_len in mem_lens:
        result = run_eval_lm(eval_lm_command(data, checkpoint, mem_len, **command_args), env=env)
        results.append(dict(result, mem_len=int(mem_len)))
        log(f"mem_len {mem_len:>5}: perplexity {result['ppl']:.2f}")
    return results


def write_csv(results: List[Dict[str, float]], path: str) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["mem_len", "loss", "ppl"])
        writer.writeheader()
        for r in results:
            writer.writerow({k: r[k] for k in ("mem_len", "loss", "ppl")})
    return path


def plot_sweep(results: List[Dict[str, float]], out_png: str,
               title: str = "Perplexity vs memory length", train_mem_len: Optional[int] = None,
               baseline: Optional[Tuple[str, float]] = None, label: Optional[str] = None) -> str:
    """Perplexity against mem_len (mem_len 0 drawn at the left edge of a symlog axis), the line
    named ``label``; ``baseline``: (label, perplexity) of another model, a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = sorted(results, key=lambda r: r["mem_len"])
    xs, ys = [r["mem_len"] for r in results], [r["ppl"] for r in results]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(xs, ys, "o-", color="C0", label=label)
    for x, y in zip(xs, ys):
        ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center",
                    fontsize=8)
    if train_mem_len is not None:
        ax.axvline(train_mem_len, color="gray", linestyle=":", label=f"training mem_len {train_mem_len}")
    if baseline is not None:
        ax.axhline(baseline[1], color="C1", linestyle="--", label=f"{baseline[0]}: {baseline[1]:.2f}")
    if train_mem_len is not None or baseline is not None or label is not None:
        ax.legend(fontsize=8)
    memory_length_axis(ax, xs)
    ax.margins(x=0.05, y=0.12)
    return finish_and_save(fig, ax, "mem_len at evaluation (tokens)", title, out_png)


def main(argv: Sequence[str] = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="fairseq-preprocess output directory")
    parser.add_argument("checkpoint", help="checkpoint to evaluate")
    parser.add_argument("--mem-lens", type=int, nargs="+", required=True)
    parser.add_argument("--tokens-per-sample", type=int, required=True,
                        help="segment length scored per step (e.g. 64 for the base recipes)")
    parser.add_argument("--clamp-len", type=int, default=-1)
    parser.add_argument("--same-length", action="store_true")
    parser.add_argument("--batch-size", type=int, default=1, help="streams (1 = one long stream)")
    parser.add_argument("--gen-subset", default="test")
    parser.add_argument("--user-dir", default=DEFAULT_USER_DIR)
    parser.add_argument("--train-mem-len", type=int, help="mark the training mem_len on the plot")
    parser.add_argument("--out-dir", required=True, help="where sweep.csv and sweep.png go")
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    results = sweep(args.data, args.checkpoint, args.mem_lens,
                    tokens_per_sample=args.tokens_per_sample, clamp_len=args.clamp_len,
                    same_length=args.same_length, batch_size=args.batch_size,
                    gen_subset=args.gen_subset, user_dir=args.user_dir, extra=extra)
    print(write_csv(results, os.path.join(args.out_dir, "sweep.csv")))
    print(plot_sweep(results, os.path.join(args.out_dir, "sweep.png"),
                     title=f"{os.path.basename(args.checkpoint)} on {args.gen_subset}",
                     train_mem_len=args.train_mem_len))


if __name__ == "__main__":
    main()
