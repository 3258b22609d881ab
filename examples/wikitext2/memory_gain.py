"""What the memory buys on real text: one model trained with memory, the same model trained
without (mem_len 0), both scored by fairseq-eval-lm at several memory lengths.

    bash examples/wikitext2/run.sh /path/to/wikitext-2        # train.txt valid.txt test.txt
    PYTHONPATH=. python examples/wikitext2/memory_gain.py --text-dir /path/to/wikitext-2

1. ``fairseq-preprocess --only-source`` of the text directory (any corpus with train/valid/test
   text; reused when the same text was binarized before);
2. ``fairseq-hydra-train --config-name wikitext2_cpu`` twice, for the same number of updates: as
   the recipe says (``mem_len`` 128) and with ``model.mem_len=0`` (the no-recurrence baseline: each
   128-token segment alone, as a vanilla Transformer LM trains). The two run side by side
   (``--jobs 2``, one thread each); an interrupted run resumes from its ``checkpoint_last.pt``;
3. ``fairseq-eval-lm`` of both checkpoints on the test split as the recipes evaluate: 64-token
   segments, ``mem_len`` 0, 32, 128 and 512, ``clamp_len`` 256 (the longest distance seen in
   training), ``same_length`` with memory; and each model as it was trained (128-token segments,
   its training ``mem_len``);
4. writes ``<results>.json``, ``<results>.md`` (the table and the verdicts) and ``<results>.png``
   (perplexity against the evaluation ``mem_len``, both models).

Hydra overrides for both trainings go after ``--`` (e.g. ``-- optimization.max_update=500``).
"""
import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from examples.fairseq_logs import read_training_log
from examples.figures import finish_and_save, memory_length_axis
from examples.mem_len_sweep import eval_lm_command, run_eval_lm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USER_DIR = os.path.join(REPO, "truncated_bptt")
CONFIG_DIR = os.path.join(REPO, "configs")
BIN = os.path.dirname(sys.executable)  # the venv's console scripts, next to its python

CONFIG = "wikitext2_cpu"
EVAL_TOKENS_PER_SAMPLE = 64  # as the recipes evaluate
EVAL_MEM_LENS = (0, 32, 128, 512)


@dataclass
class Run:
    """One training of the recipe and its evaluations."""
    name: str  # "memory" | "no_memory"
    label: str
    save_dir: str
    mem_len_override: Optional[int] = None  # model.mem_len=... (None: the recipe's)
    train_tokens_per_sample: int = 0  # as composed by hydra (read back after training)
    train_mem_len: int = 0
    train_seconds: float = 0.0
    updates: int = 0
    valid_ppl: Optional[float] = None
    sweep: Dict[int, float] = field(default_factory=dict)  # eval mem_len -> test perplexity
    as_trained: Optional[float] = None  # test ppl at the training segment length and mem_len
    tokens: int = 0  # test tokens scored (the same for every evaluation)


def cli_env(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="",
               PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    return env


def check_call_logged(command: List[str], log_path: str, env, cwd: Optional[str] = None) -> float:
    """Run ``command`` with its output appended to ``log_path``; its wall seconds. Raises with the
    log's tail if it fails."""
    start = time.time()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if proc.returncode != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{shlex.join(command)} exited {proc.returncode} (log: {log_path}):\n{tail}")
    return time.time() - start


def preprocess(text_dir: str, data_dir: str, env) -> str:
    """Binarize ``text_dir``'s splits into ``data_dir`` unless the same text already is there."""
    texts = {s: os.path.join(text_dir, f"{s}.txt") for s in ("train", "valid", "test")}
    missing = [p for p in texts.values() if not os.path.isfile(p)]
    if missing:
        sys.exit(f"memory_gain: {', '.join(missing)} not found: --text-dir must hold train.txt, "
                 "valid.txt and test.txt")
    stamp = {s: [os.path.abspath(p), os.path.getsize(p), int(os.path.getmtime(p))] for s, p in texts.items()}
    stamp_path = os.path.join(data_dir, "source.json")
    if os.path.exists(stamp_path):
        with open(stamp_path) as f:
            if json.load(f) == stamp:
                return "reused"
    os.makedirs(data_dir, exist_ok=True)
    for name in os.listdir(data_dir):  # other text binarized here before: fairseq refuses to overwrite
        if name == "dict.txt" or name.endswith((".bin", ".idx")):
            os.remove(os.path.join(data_dir, name))
    check_call_logged([os.path.join(BIN, "fairseq-preprocess"), "--only-source", "--destdir", data_dir,
                       "--trainpref", texts["train"], "--validpref", texts["valid"],
                       "--testpref", texts["test"], "--workers", "2"],
                      os.path.join(data_dir, "preprocess.log"), env)
    with open(stamp_path, "w") as f:
        json.dump(stamp, f)
    return "binarized"


def train_command(data: str, run: Run, overrides: Sequence[str]) -> List[str]:
    if run.mem_len_override is not None:  # (hydra refuses a key given twice)
        overrides = [o for o in overrides if not o.lstrip("+").startswith("model.mem_len=")]
    return [os.path.join(BIN, "fairseq-hydra-train"), "--config-dir", CONFIG_DIR, "--config-name", CONFIG,
            f"task.data={data}", f"checkpoint.save_dir={run.save_dir}", f"common.user_dir={USER_DIR}",
            *overrides, *([] if run.mem_len_override is None else [f"model.mem_len={run.mem_len_override}"])]


def train(data: str, run: Run, overrides: Sequence[str], env) -> None:
    os.makedirs(run.save_dir, exist_ok=True)
    # cwd: hydra writes its own hydra_train.log there
    run.train_seconds = check_call_logged(train_command(data, run, overrides),
                                          os.path.join(run.save_dir, "stdout.log"), env, cwd=run.save_dir)
    records = read_training_log(os.path.join(run.save_dir, "train.log"))
    updates = [r["num_updates"] for kind in ("train", "valid") for r in records[kind]]
    if not updates:
        raise RuntimeError(f"no training record in {run.save_dir}/train.log")
    run.updates = int(max(updates))
    valid = [r for r in records["valid"] if "ppl" in r]
    run.valid_ppl = valid[-1]["ppl"] if valid else None
    config = OmegaConf.load(os.path.join(run.save_dir, "hydra", "config.yaml"))  # what hydra composed
    run.train_tokens_per_sample, run.train_mem_len = int(config.task.tokens_per_sample), int(config.model.mem_len)


@dataclass
class Evaluation:
    """One fairseq-eval-lm run of a model."""
    run: Run
    mem_len: int
    tokens_per_sample: int
    clamp_len: int
    same_length: bool = True
    as_trained: bool = False


def clamp_len(runs: Sequence[Run]) -> int:
    """The evaluations' clamp_len: the longest distance any model saw in training."""
    return max(r.train_tokens_per_sample + r.train_mem_len for r in runs)


def evaluations(runs: Sequence[Run], mem_lens: Sequence[int]) -> List[Evaluation]:
    """The sweep of each model, then each model as it was trained (its training segment length
    and mem_len, no clamp, no same_length)."""
    out = [Evaluation(run, m, EVAL_TOKENS_PER_SAMPLE, clamp_len(runs)) for run in runs for m in mem_lens]
    out += [Evaluation(run, run.train_mem_len, run.train_tokens_per_sample, -1, False, as_trained=True)
            for run in runs]
    return out


def evaluate(data: str, ev: Evaluation, env, log) -> None:
    command = eval_lm_command(data, os.path.join(ev.run.save_dir, "checkpoint_last.pt"), ev.mem_len,
                              ev.tokens_per_sample, clamp_len=ev.clamp_len, same_length=ev.same_length,
                              batch_size=1, gen_subset="test", user_dir=USER_DIR, bin_dir=BIN,
                              extra=["--cpu"])
    result = run_eval_lm(command, env=env)
    if ev.run.tokens and result["tokens"] != ev.run.tokens:
        raise RuntimeError(f"{ev.run.name}: {result['tokens']} test tokens scored, earlier {ev.run.tokens}")
    ev.run.tokens = result["tokens"]
    if ev.as_trained:
        ev.run.as_trained = result["ppl"]
    else:
        ev.run.sweep[ev.mem_len] = result["ppl"]
    where = "as trained" if ev.as_trained else f"{ev.tokens_per_sample}-token segments"
    log(f"{ev.run.name:>9}: mem_len {ev.mem_len:>4} ({where}): test ppl {result['ppl']:.2f}")


def verdicts(memory: Run, no_memory: Run, mem_lens: Sequence[int]) -> List[str]:
    """The two questions the experiment asks, answered from the numbers (one line each)."""
    ppl = [memory.sweep[m] for m in mem_lens]
    falls = all(b < a for a, b in zip(ppl, ppl[1:]))
    change = 100 * (ppl[-1] / ppl[0] - 1)
    lines = [f"Perplexity of the model trained with memory as the evaluation memory grows "
             f"({', '.join(f'{m}: {p:.2f}' for m, p in zip(mem_lens, ppl))}): "
             f"{'falls at every step' if falls else 'does NOT fall at every step'}; "
             f"mem_len {mem_lens[-1]} vs 0: {change:+.1f} %."]
    best_mem = min(memory.sweep, key=memory.sweep.get)
    base_settings = {f"mem_len {m}, {EVAL_TOKENS_PER_SAMPLE}-token segments": p for m, p in no_memory.sweep.items()}
    base_settings[f"as trained ({no_memory.train_tokens_per_sample}-token segments, mem_len 0)"] = no_memory.as_trained
    best_base = min(base_settings, key=base_settings.get)
    ours, theirs = memory.sweep[best_mem], base_settings[best_base]
    diff = 100 * (ours / theirs - 1)
    lines.append(f"Trained with memory (best: mem_len {best_mem}, {ours:.2f}) vs trained without "
                 f"(best: {best_base}, {theirs:.2f}): {diff:+.1f} %: "
                 + ("the model trained with memory is better" if ours < theirs
                    else "the model trained with memory is NOT better"))
    same = [m for m in mem_lens if memory.sweep[m] < no_memory.sweep[m]]
    lines.append(f"At equal evaluation settings the model trained with memory is better at mem_len "
                 f"{', '.join(map(str, same)) if same else 'none'} of {', '.join(map(str, mem_lens))}.")
    return lines


def plot(runs: Sequence[Run], out_png: str, title: str) -> str:
    """Test perplexity against the evaluation mem_len (symlog axis), one line per model; each
    model as trained as a dotted horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, run in enumerate(runs):
        xs = sorted(run.sweep)
        ys = [run.sweep[x] for x in xs]
        ax.plot(xs, ys, "o-", color=f"C{i}", label=f"{run.label}, {EVAL_TOKENS_PER_SAMPLE}-token segments")
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 7 if i == 0 else -13),
                        ha="center", fontsize=8, color=f"C{i}")
        if run.as_trained is not None:
            ax.axhline(run.as_trained, color=f"C{i}", linestyle=":",
                       label=f"{run.label}, as trained ({run.train_tokens_per_sample}-token segments, "
                             f"mem_len {run.train_mem_len}): {run.as_trained:.1f}")
    xs = sorted({x for run in runs for x in run.sweep})
    memory_length_axis(ax, xs)
    ax.margins(x=0.05, y=0.15)
    ax.legend(fontsize=8)
    return finish_and_save(fig, ax, "mem_len at evaluation (tokens)", title, out_png)


def markdown(info: Dict, runs: Sequence[Run], mem_lens: Sequence[int], lines: Sequence[str],
             png: str) -> str:
    memory, no_memory = runs
    cols = " | ".join(f"mem_len {m}" for m in mem_lens)
    out = [
        f"# What the memory buys on {info['corpus']}",
        "",
        f"Run: {info['started']} .. {info['finished']} UTC, command: `{info['command']}`",
        f"Machine: {info['machine']}; load average (1 min) at start {info['load_start']}, at end "
        f"{info['load_end']}; trainings side by side: {info['jobs']}, {info['threads']} thread(s) each.",
        "",
        f"Model and training: `configs/{CONFIG}.yaml` with overrides `{' '.join(info['overrides']) or 'none'}`; "
        f"the baseline is the same with `model.mem_len=0` (each {no_memory.train_tokens_per_sample}-token "
        "segment alone), trained for the same number of updates.",
        "",
        "| model | updates | training wall s | final valid ppl |",
        "|---|---:|---:|---:|",
    ]
    for run in runs:
        valid = f"{run.valid_ppl:.2f}" if run.valid_ppl is not None else "-"
        out.append(f"| {run.label} | {run.updates:,} | {run.train_seconds:,.0f} | {valid} |")
    out += [
        "",
        f"Test perplexity by `fairseq-eval-lm` ({memory.tokens:,} tokens, every one scored once, batch 1): "
        f"{EVAL_TOKENS_PER_SAMPLE}-token segments, `--model-overrides "
        f"\"{{'mem_len': M, 'clamp_len': {clamp_len(runs)}, 'same_length': True}}\"` (no same_length at M = 0; "
        f"{clamp_len(runs)}: the longest distance seen in training); as trained: each model's training "
        "segment length and mem_len, no clamp.",
        "",
        f"| model | {cols} | as trained |",
        "|---|" + "---:|" * (len(mem_lens) + 1),
    ]
    for run in runs:
        cells = " | ".join(f"{run.sweep[m]:.2f}" for m in mem_lens)
        out.append(f"| {run.label} | {cells} | {run.as_trained:.2f} (mem_len {run.train_mem_len}) |")
    ratio = " | ".join(f"{100 * (memory.sweep[m] / no_memory.sweep[m] - 1):+.1f} %" for m in mem_lens)
    out.append(f"| with / without - 1 | {ratio} | "
               f"{100 * (memory.as_trained / no_memory.as_trained - 1):+.1f} % |")
    out += ["", "Verdicts:", ""] + [f"- {line}" for line in lines] + ["", f"Plot: {png}", ""]
    return "\n".join(out)


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def parse_args(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: List[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text-dir", required=True, help="directory with train.txt, valid.txt, test.txt")
    parser.add_argument("--out-dir", default=os.path.join(REPO, "runs", "wikitext2"),
                        help="data-bin, checkpoints and logs (default runs/wikitext2)")
    parser.add_argument("--results", help="path prefix of the results .md/.json/.png (default "
                        "benchmarks/results/wikitext2-memory-<UTC time>)")
    parser.add_argument("--corpus-name", default="WikiText-2", help="the corpus, for the results' title")
    parser.add_argument("--mem-lens", type=int, nargs="+", default=list(EVAL_MEM_LENS),
                        help="evaluation memory lengths (default 0 32 128 512)")
    parser.add_argument("--jobs", type=int, default=2, choices=(1, 2),
                        help="trainings/evaluations side by side (default 2)")
    parser.add_argument("--threads", type=int, help="torch threads per job (default: 2 / jobs)")
    parser.add_argument("--fresh", action="store_true", help="delete earlier checkpoints first "
                        "(default: an interrupted training resumes from its checkpoint_last.pt)")
    args = parser.parse_args(argv)
    if 0 not in args.mem_lens:
        parser.error("--mem-lens must include 0 (the no-memory point)")
    args.mem_lens = sorted(set(args.mem_lens))
    args.overrides = overrides
    args.threads = args.threads or max(1, 2 // args.jobs)
    return args


def run_all(args, runs: Sequence[Run], data: str, env, log) -> None:
    """Train both models, then evaluate them, ``args.jobs`` processes at a time."""
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in [pool.submit(train, data, run, args.overrides, env) for run in runs]:
            future.result()
    for run in runs:
        log(f"{run.name:>9}: {run.updates} updates in {run.train_seconds:.0f} s, valid ppl {run.valid_ppl}")
    runs[0].label = f"trained with mem_len {runs[0].train_mem_len}"
    if runs[0].train_mem_len == 0:
        raise RuntimeError("the recipe (with these overrides) trains with mem_len 0: nothing to compare")
    if runs[0].updates != runs[1].updates:
        raise RuntimeError(f"the two trainings reached {runs[0].updates} and {runs[1].updates} updates: "
                           "they must train equally long (--fresh to start both again)")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in [pool.submit(evaluate, data, ev, env, log) for ev in evaluations(runs, args.mem_lens)]:
            future.result()


def main(argv=None) -> int:
    args = parse_args(argv)
    out = os.path.abspath(args.out_dir)
    started = time.gmtime()
    prefix = args.results or os.path.join(REPO, "benchmarks", "results",
                                          time.strftime("wikitext2-memory-%Y%m%d-%H%M%S", started))
    info = dict(corpus=args.corpus_name, started=time.strftime("%Y-%m-%d %H:%M:%S", started),
                command=shlex.join(["examples/wikitext2/memory_gain.py"] + list(sys.argv[1:] if argv is None else argv)),
                machine=f"{platform.machine()}, {os.cpu_count()} CPUs", load_start=load_average(),
                jobs=args.jobs, threads=args.threads, overrides=args.overrides)
    env = cli_env(args.threads)

    def log(message):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    data = os.path.join(out, "data-bin")
    log(f"fairseq-preprocess {args.text_dir} -> {data}: {preprocess(args.text_dir, data, env)}")
    runs = [Run("memory", "trained with memory", os.path.join(out, "memory")),
            Run("no_memory", "trained with mem_len 0", os.path.join(out, "no_memory"), mem_len_override=0)]
    for run in runs:
        if args.fresh and os.path.isdir(run.save_dir):
            for name in os.listdir(run.save_dir):
                if name.endswith(".pt") or name.endswith(".log"):
                    os.remove(os.path.join(run.save_dir, name))
        log(f"training {run.name}: {shlex.join(train_command(data, run, args.overrides))}")
    run_all(args, runs, data, env, log)

    lines = verdicts(runs[0], runs[1], args.mem_lens)
    info.update(finished=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), load_end=load_average())
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    png = plot(runs, prefix + ".png", f"{args.corpus_name} test perplexity vs evaluation memory")
    shown = os.path.relpath(png, REPO) if os.path.abspath(png).startswith(REPO + os.sep) else png
    with open(prefix + ".md", "w", encoding="utf-8") as f:
        f.write(markdown(info, runs, args.mem_lens, lines, shown))
    with open(prefix + ".json", "w", encoding="utf-8") as f:
        json.dump(dict(info, mem_lens=args.mem_lens, verdicts=lines,
                       runs=[{k: v for k, v in asdict(r).items()} for r in runs]), f, indent=1)
    for line in lines:
        print(line)
    print(f"results: {prefix}.md\n         {prefix}.json\n         {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
