"""Side-by-side benchmark of our Transformer-XL and fairseq's examples/truncated_bptt (HuggingFace TransfoXL).

One run, one machine, the same settings and data for both:

  speed    training tokens/s (forward+backward through each task's own train_step, in-process, by
           benchmarks/train_step_speed.py), fairseq-eval-lm tokens/s (the real CLI, fairseq's own
           "Evaluated N tokens ... tokens/s" line), peak memory, and achieved FLOP/s as a fraction
           of the machine's fp32 matmul peak measured at the same thread count (benchmarks/matmul_peak.py;
           model FLOPs counted analytically by benchmarks/flops.py).
  quality  fairseq-train both with identical hyperparameters (configs/tiny_cpu.yaml's model, batch
           and Adam settings; see quality_flags): the example for a wall-clock budget
           (N updates), ours for the same N updates and for the same wall-clock budget; then
           fairseq-eval-lm test perplexity at short and long memory, and a plot. The equal-updates
           comparison (benchmarks/equal_updates.py) runs matched pairs over several seeds: the
           example from its fresh model, ours from the same weights converted
           (benchmarks/initial_checkpoint.py) with the example's initial memory and batches; its
           verdict (agree / disagree / inconclusive) is printed with the figures.

The two implementations register the same names (`transformer_xl`, `truncated_bptt_lm`), so they never
share a process: ours runs in .venv/py310 with `--user-dir <repo>/truncated_bptt`, the example in
.venv/bench-example (scripts/setup_bench_env.sh) with `--user-dir <its site-packages>/fairseq/examples/
truncated_bptt`. Usually started through `bash benchmarks/run.sh`, which makes that environment first.

    .venv/py310/bin/python -m benchmarks.compare --text-dir ../shared/data/wikitext-2
    .venv/py310/bin/python -m benchmarks.compare --parts speed          # only the speed table

(from the repository root: ``benchmarks`` and ``examples`` are packages there).

Writes benchmarks/results/cpu-<UTC time>.{json,md} (+ .png for quality) and prints the tables.
"""
import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional

from benchmarks.equal_updates import Pair, largest_curve_gap_bits, verdict
from benchmarks.flops import XLShape, eval_forward_flops, train_step_flops
from examples.fairseq_logs import final_update, parse_eval_lm, parse_training_log

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)

OURS = "ours"
EXAMPLE = "example"
# The speed targets, ours / example (the project's speed issue): training tokens/s, and
# fairseq-eval-lm tokens/s at batch 1 in fp32.
TRAIN_TARGET = 5.0
EVAL_TARGET = 5.0

# The benchmark configuration of the model issue (fp32; dropout is the example's default, 0).
BENCH_MODEL = {"n_layer": 4, "d_model": 256, "n_head": 4, "d_head": 64, "d_inner": 1024,
               "cutoffs": [2000, 10000], "mem_len": 128, "dropout": 0.0, "dropatt": 0.0}
BENCH_TPS, BENCH_BATCH = 128, 8
# fairseq-eval-lm settings of the paper / the example's README.
EVAL_TPS, EVAL_MEM, EVAL_CLAMP = 64, 640, 400
# Quality: the tiny CPU recipe (configs/tiny_cpu.yaml) as flags both implementations accept.
TINY_MODEL = {"n_layer": 2, "d_model": 64, "n_head": 4, "d_head": 16, "d_inner": 256,
              "cutoffs": [2000, 10000], "mem_len": 128, "dropout": 0.0, "dropatt": 0.0}
TINY_TPS, TINY_BATCH = 64, 16
# Its evaluation at short memory (as trained) and long memory (distances clamped to the longest
# one seen in training, tokens_per_sample + mem_len).
QUALITY_MEMORIES = {
    "short": {"tps": TINY_TPS, "mem_len": TINY_MODEL["mem_len"], "clamp_len": -1, "same_length": False},
    "long": {"tps": TINY_TPS, "mem_len": EVAL_MEM, "clamp_len": TINY_TPS + TINY_MODEL["mem_len"],
             "same_length": True},
}


# ------------------------------------------------------------------------------------ helpers
def log(msg: str) -> None:
    print(f"[compare {datetime.datetime.utcnow():%H:%M:%S}] {msg}", flush=True)


class Side:
    """One implementation: the interpreter of its environment, its fairseq CLIs and its --user-dir."""

    def __init__(self, name: str, venv: str, user_dir: Optional[str] = None):
        self.name = name
        self.venv = os.path.abspath(venv)
        self.python = os.path.join(self.venv, "bin", "python")
        if not os.access(self.python, os.X_OK):
            setup = "scripts/setup_bench_env.sh" if name == EXAMPLE else "scripts/setup_env.sh py310"
            raise SystemExit(f"compare: no environment at {venv}: run `bash {setup}` first")
        if user_dir is None:  # the example ships inside fairseq's wheel
            user_dir = subprocess.check_output(
                [self.python, "-c", "import fairseq, os; print(os.path.join(os.path.dirname("
                 "fairseq.__file__), 'examples', 'truncated_bptt'))"],
                text=True, stderr=subprocess.DEVNULL).strip()
        self.user_dir = user_dir

    def cli(self, name: str) -> str:
        return os.path.join(self.venv, "bin", name)


def model_flags(m: Dict) -> List[str]:
    return ["--arch", "transformer_xl", "--n-layer", str(m["n_layer"]), "--d-model", str(m["d_model"]),
            "--n-head", str(m["n_head"]), "--d-head", str(m["d_head"]), "--d-inner", str(m["d_inner"]),
            "--cutoffs", ",".join(map(str, m["cutoffs"])), "--mem-len", str(m["mem_len"]),
            "--dropout", str(m["dropout"]), "--dropatt", str(m["dropatt"])]


def xl_shape(m: Dict, vocab: int) -> XLShape:
    return XLShape(m["n_layer"], m["d_model"], m["n_head"], m["d_head"], m["d_inner"], vocab, m["cutoffs"])


def run_cmd(cmd: List[str], log_path: str, threads: int, timeout: Optional[float] = None,
            pythonpath: Optional[str] = None) -> Dict:
    """Run a command with `threads` BLAS/OpenMP threads, all output to log_path; return its exit code,
    wall time, peak RSS (MiB, from the kernel's accounting of that child) and output. The child's
    PYTHONPATH is `pythonpath` (default: none, so each side imports only its own environment)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        start = time.time()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=os.path.dirname(log_path))
        deadline = None if timeout is None else start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.time() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.time() - start
    with open(log_path) as f:
        text = f.read()
    return {"rc": proc.returncode, "wall_s": wall, "max_rss_mb": usage.ru_maxrss / 1024.0, "output": text}


def check(result: Dict, what: str, log_path: str) -> Dict:
    if result["rc"] != 0:
        tail = "\n".join(result["output"].splitlines()[-15:])
        raise SystemExit(f"compare: {what} failed (exit {result['rc']}); log {log_path}:\n{tail}")
    return result


def parse_result_line(text: str) -> Dict:
    for line in reversed(text.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise ValueError("no RESULT line")


def machine_description(threads: int) -> Dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            mem_gib = int(f.readline().split()[1]) / 2 ** 20
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "memory_gib": mem_gib,
            "os": platform.platform(), "threads": threads, "load_average_start": os.getloadavg()}


# --------------------------------------------------------------------------------------- data
def head_of(src_path: str, dst_path: str, n_tokens: int) -> int:
    """Copy whole lines of src_path to dst_path until at least n_tokens tokens (words + one eos per
    line, as fairseq counts them); returns the token count."""
    n = 0
    with open(src_path, encoding="utf-8") as src, open(dst_path, "w", encoding="utf-8") as out:
        for line in src:
            out.write(line)
            n += len(line.split()) + 1
            if n >= n_tokens:
                break
    return n


def prepare_data(text_dir: str, eval_speed_tokens: int, test_tokens: int, ours: Side) -> str:
    """Binarize <text_dir>/{train,valid,test}.txt with fairseq-preprocess --only-source (once; cached
    under runs/bench/data-bin), plus two splits cut from the start of the test text: `speedtest`
    (~eval_speed_tokens tokens, for the eval-lm speed runs) and, if test_tokens > 0, `testhead`
    (~test_tokens tokens, for the quality runs when the whole test set would take too long)."""
    text_dir = os.path.abspath(text_dir)  # fairseq-preprocess runs in its log directory
    names = {}
    for split in ("train", "valid", "test"):
        path = os.path.join(text_dir, f"{split}.txt")
        if not os.path.isfile(path):
            raise SystemExit(f"compare: {path} is missing: --text-dir needs train.txt, valid.txt, test.txt")
        st = os.stat(path)
        names[split] = f"{os.path.abspath(path)}:{st.st_size}:{int(st.st_mtime)}"
    key = hashlib.sha256(json.dumps([names, eval_speed_tokens, test_tokens]).encode()).hexdigest()[:10]
    dest = os.path.join(ROOT, "runs", "bench", "data-bin", f"{os.path.basename(os.path.abspath(text_dir))}-{key}")
    if os.path.isfile(os.path.join(dest, "dict.txt")):
        return dest
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    test_txt = os.path.join(text_dir, "test.txt")
    extra = {"speedtest": head_of(test_txt, os.path.join(tmp, "speedtest.txt"), eval_speed_tokens)}
    if test_tokens > 0:
        extra["testhead"] = head_of(test_txt, os.path.join(tmp, "testhead.txt"), test_tokens)
    log(f"binarizing {text_dir} (+ " + ", ".join(f"{k}: first {v:,} test tokens" for k, v in extra.items())
        + f") into {dest}")
    out = os.path.join(tmp, "preprocess.out")
    check(run_cmd([ours.cli("fairseq-preprocess"), "--only-source", "--workers", "2",
                   "--trainpref", os.path.join(text_dir, "train.txt"),
                   "--validpref", os.path.join(text_dir, "valid.txt"),
                   "--testpref", ",".join([test_txt] + [os.path.join(tmp, f"{k}.txt") for k in extra]),
                   "--destdir", tmp], out, threads=2), "fairseq-preprocess", out)
    for i, name in enumerate(extra, start=1):
        for ext in ("bin", "idx"):
            os.rename(os.path.join(tmp, f"test{i}.{ext}"), os.path.join(tmp, f"{name}.{ext}"))
    os.rename(tmp, dest)
    return dest


def split_cluster_counts(data_dir: str, text_path: str, shape: XLShape) -> List[int]:
    """Targets of each adaptive-softmax cluster over a text, as fairseq binarizes it (words + one eos
    per line; unknown words are <unk>; ids 0-3 are fairseq's specials, dict.txt follows in order)."""
    index = {"</s>": 2}
    with open(os.path.join(data_dir, "dict.txt"), encoding="utf-8") as f:
        for i, line in enumerate(f):
            index.setdefault(line.rsplit(" ", 1)[0], i + 4)
    bounds = shape.cluster_bounds()
    counts = [0] * (len(bounds) - 1)
    with open(text_path, encoding="utf-8") as f:
        for line in f:
            for word in line.split() + ["</s>"]:
                tok = index.get(word, 3)
                counts[next(i for i in range(len(counts)) if tok < bounds[i + 1])] += 1
    return counts


# -------------------------------------------------------------------------------------- speed
# The dtypes of the table's rows and the matmul peak each is measured against.
PEAK_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def measure_peaks(ours: Side, work: str, threads: int, when: str) -> Dict[str, Dict]:
    """{row dtype: matmul_peak.py's result in that dtype}."""
    peaks = {}
    for row_dtype, dtype in PEAK_DTYPES.items():
        log(f"{dtype} matmul peak at {threads} threads ({when})")
        path = os.path.join(work, f"matmul_peak-{dtype}-{when}.out")
        peaks[row_dtype] = parse_result_line(check(run_cmd(
            [ours.python, os.path.join(BENCH, "matmul_peak.py"), "--threads", str(threads),
             "--dtype", dtype], path, threads), "matmul_peak.py", path)["output"])
    return peaks


def best_peaks(start: Dict[str, Dict], end: Dict[str, Dict]) -> Dict[str, Dict]:
    """Per dtype, the higher of the start and end measurements (a busy moment only lowers one),
    with both kept under "measurements"."""
    best = {}
    for row_dtype in start:
        peak = dict(max(start[row_dtype], end[row_dtype], key=lambda p: p["flops_per_s"]))
        peak["measurements"] = [start[row_dtype]["flops_per_s"], end[row_dtype]["flops_per_s"]]
        best[row_dtype] = peak
    return best


def measure_speed(args, sides: Dict[str, Side], data: str, work: str, results: Dict) -> None:
    threads = args.threads
    start_peaks = measure_peaks(sides[OURS], work, threads, "start")
    vocab = None

    # Training steps, alternating the two sides over rounds so that a burst of load from elsewhere
    # hits both; each side's figure is its best round (the least disturbed one).
    train = {OURS: [], EXAMPLE: []}
    common = [data, "--task", "truncated_bptt_lm", "--tokens-per-sample", str(BENCH_TPS),
              "--batch-size", str(BENCH_BATCH), "--cpu", "--seed", "1",
              *model_flags(BENCH_MODEL)]
    for r in range(args.rounds):
        for name in (EXAMPLE, OURS):
            side = sides[name]
            path = os.path.join(work, f"train_speed-{name}-{r}.out")
            log(f"training steps, {name}, round {r + 1}/{args.rounds}")
            res = parse_result_line(check(run_cmd(
                [side.python, os.path.join(BENCH, "train_step_speed.py"), "--threads", str(threads),
                 "--warmup", str(args.warmup), "--steps", str(args.steps), "--",
                 *common, "--user-dir", side.user_dir], path, threads), f"train speed ({name})", path)["output"])
            train[name].append(res)
            vocab = res["vocab"]
    shape = xl_shape(BENCH_MODEL, vocab)
    results["train"] = {}
    for name, rounds in train.items():
        best = max(rounds, key=lambda r: r["tokens_per_s"])
        per_step = [c / len(best["step_times"]) for c in best["cluster_counts"]]
        flops = train_step_flops(shape, BENCH_BATCH, BENCH_TPS, BENCH_MODEL["mem_len"], per_step)
        results["train"][name] = {
            "tokens_per_s": best["tokens_per_s"],
            "tokens_per_s_rounds": [r["tokens_per_s"] for r in rounds],
            "median_step_s": best["median_step_s"],
            "params": best["params"],
            "model_file": best["model_file"],
            "criterion": best["criterion_class"],
            "rss_before_mb": best["rss_before_mb"],
            "peak_rss_mb": best["peak_rss_mb"],
            "model_flops_per_step": flops,
            "executed_flops_per_step": best["executed_flops_per_step"],
            "model_flops_per_s": flops * best["tokens_per_s"] / (BENCH_BATCH * BENCH_TPS),
            "versions": best["versions"],
        }

    # fairseq-eval-lm on a checkpoint of the benchmark size: each side trains one update to get one.
    speed_txt = os.path.join(data, "speedtest.txt")
    eval_counts = split_cluster_counts(data, speed_txt, shape)
    ckpts = {}
    for name in (EXAMPLE, OURS):
        side = sides[name]
        save = os.path.join(work, f"ckpt-{name}")
        path = os.path.join(work, f"ckpt-{name}.out")
        log(f"one update of {name} to get a checkpoint of the benchmark size")
        check(run_cmd([side.cli("fairseq-train"), *common, "--user-dir", side.user_dir,
                       "--optimizer", "adam", "--lr", "0.0001", "--max-update", "1", "--disable-validation",
                       "--no-epoch-checkpoints", "--save-dir", save], path, threads),
              f"fairseq-train ({name})", path)
        ckpts[name] = os.path.join(save, "checkpoint_last.pt")
    overrides = f'{{"mem_len": {EVAL_MEM}, "clamp_len": {EVAL_CLAMP}, "same_length": True}}'
    # The headline pair (batch 1, fp32) alternates over rounds like the training steps, beside ours
    # scoring one segment per step (--eval-segments-per-step 1; the default fills a step with
    # several, truncated_bptt/segment_block.py); best round kept. `segments` None: the default.
    runs = [(EXAMPLE, 1, "fp32", None), (OURS, 1, "fp32", None), (OURS, 1, "fp32", 1)] * args.eval_rounds + [
        (OURS, args.eval_streams, "fp32", None), (OURS, 1, "bf16", None),
        (OURS, args.eval_streams, "bf16", None)]
    entries = []
    for i, (name, streams, dtype, segments) in enumerate(runs):
        side = sides[name]
        tag = "" if segments is None else f"-k{segments}"
        path = os.path.join(work, f"eval_speed-{name}-b{streams}-{dtype}{tag}-{i}.out")
        log(f"fairseq-eval-lm speed, {name}, batch {streams}, {dtype}")
        cmd = [side.cli("fairseq-eval-lm"), data, "--path", ckpts[name], "--user-dir", side.user_dir,
               "--task", "truncated_bptt_lm", "--gen-subset", "speedtest", "--cpu",
               "--batch-size", str(streams), "--required-batch-size-multiple", "1",
               "--tokens-per-sample", str(EVAL_TPS), "--model-overrides", overrides]
        if dtype == "bf16":
            cmd.append("--bf16")
        if segments is not None:
            cmd += ["--eval-segments-per-step", str(segments)]
        res = run_cmd(cmd, path, threads)
        entry = {"impl": name, "batch": streams, "dtype": dtype, "segments": segments,
                 "steps_of": segments_per_step(res["output"]), "log": os.path.relpath(path, ROOT),
                 "rc": res["rc"], "max_rss_mb": res["max_rss_mb"]}
        try:
            scored = parse_eval_lm(res["output"]) if res["rc"] == 0 else None
        except ValueError:
            scored = None
        if scored is None:
            entry["error"] = res["output"].strip().splitlines()[-1][:300] if res["output"].strip() else "no output"
        else:
            # (the seconds are derived from fairseq's tokens/s, which it prints with more digits)
            entry.update(tokens=scored["tokens"], seconds=scored["seconds"],
                         tokens_per_s=scored["tokens_per_s"], loss=scored["loss"])
            flops = eval_forward_flops(shape, scored["tokens"], streams, EVAL_TPS, EVAL_MEM,
                                       eval_counts)
            entry["model_flops_per_s"] = flops / entry["seconds"]
        entries.append(entry)
    results["eval"] = best_rounds(entries)
    # The peaks again at the end: the best of the two is the machine's.
    peaks = best_peaks(start_peaks, measure_peaks(sides[OURS], work, threads, "end"))
    results["matmul_peak"] = peaks["fp32"]
    results["matmul_peaks"] = peaks
    for entry in list(results["train"].values()) + results["eval"]:  # training rows are fp32
        if "model_flops_per_s" in entry:
            peak = peaks[entry.get("dtype", "fp32")]
            entry["fraction_of_peak"] = entry["model_flops_per_s"] / peak["flops_per_s"]
            entry["peak_dtype"] = peak["dtype"]
    fp32_loss = {(e["impl"], e["batch"]): e.get("loss") for e in results["eval"]
                 if e["dtype"] == "fp32" and e.get("segments") is None}
    for e in results["eval"]:
        if e["dtype"] == "bf16" and e.get("loss") is not None and fp32_loss.get((e["impl"], e["batch"])) == e["loss"]:
            # Same loss to all printed digits as fp32: the model was not run in bf16.
            e["note"] = ("--bf16 had no effect (loss identical to fp32): fairseq 0.12.2's eval-lm "
                         "casts the model only for --fp16")


def segments_per_step(output: str) -> Optional[int]:
    """The segments per step our task's fairseq-eval-lm log says it scores, or None (the example)."""
    found = re.search(r"segments of \d+ tokens, (\d+) per step", output)
    return int(found.group(1)) if found else None


def best_rounds(entries: List[Dict]) -> List[Dict]:
    """One entry per (impl, batch, dtype, segments): the fastest successful round, with all rounds'
    tokens/s."""
    groups: Dict[tuple, List[Dict]] = {}
    for e in entries:
        groups.setdefault((e["impl"], e["batch"], e["dtype"], e.get("segments")), []).append(e)
    best = []
    for group in groups.values():
        ok = [e for e in group if "error" not in e]
        chosen = dict(max(ok, key=lambda e: e["tokens_per_s"]) if ok else group[0])
        chosen["tokens_per_s_rounds"] = [e["tokens_per_s"] for e in ok]
        best.append(chosen)
    return best


# ------------------------------------------------------------------------------------ quality
def quality_flags(args, seed: int = 1) -> List[str]:
    """configs/tiny_cpu.yaml's model, batch and Adam settings. Its lr schedule (our cosine_warmup,
    whose length is max_update) is replaced by fairseq's inverse_sqrt with the same warm-up: the
    example has no cosine_warmup, and a wall-clock budget fixes no max_update."""
    return ["--task", "truncated_bptt_lm", "--tokens-per-sample", str(TINY_TPS),
            "--batch-size", str(TINY_BATCH), *model_flags(TINY_MODEL),
            "--optimizer", "adam", "--adam-betas", "(0.9, 0.999)", "--clip-norm", "0.25",
            "--lr", str(args.quality_lr), "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100",
            "--warmup-init-lr", "1e-07",
            "--cpu", "--seed", str(seed), "--log-format", "json", "--log-interval", "25",
            "--disable-validation", "--no-epoch-checkpoints"]


def train_log(text: str) -> List[Dict]:
    """The training curve of a fairseq-train log: its train_inner records' update, ppl, wall
    seconds and words/s."""
    return [{"update": int(r["num_updates"]), "ppl": r["ppl"], "wall": r["wall"], "wps": r["wps"]}
            for r in parse_training_log(text)["train"]]


def final_updates(text: str) -> int:
    """The number of updates a fairseq-train log reached (its last record of any kind)."""
    return final_update(parse_training_log(text))


def initial_weights(sides: Dict[str, Side], data: str, work: str, args, seeds: List[int],
                    threads: int) -> Dict[int, Dict[str, str]]:
    """For each seed: the example's fresh model under the quality flags with that seed (what its
    fairseq-train would start from) as a checkpoint at update 0, and the same weights converted
    into ours, by benchmarks/initial_checkpoint.py in each side's environment:
    {seed: {side: checkpoint for --finetune-from-model}}."""
    out = {}
    for seed in seeds:
        paths = {name: os.path.join(work, f"quality-init-seed{seed}-{name}.pt") for name in (EXAMPLE, OURS)}
        hf_config = os.path.join(work, f"quality-init-seed{seed}-example-transformers.json")
        how = {EXAMPLE: ["--save-transformers-config", hf_config],
               OURS: ["--from-example", paths[EXAMPLE], hf_config]}
        for name in (EXAMPLE, OURS):
            side = sides[name]
            path = os.path.join(work, f"quality-init-seed{seed}-{name}.out")
            log(f"quality: the example's initial weights (seed {seed}) as {name} checkpoint")
            check(run_cmd([side.python, os.path.join(BENCH, "initial_checkpoint.py"), paths[name],
                           *how[name], "--", data, *quality_flags(args, seed), "--user-dir",
                           side.user_dir], path, threads),
                  f"initial_checkpoint.py ({name}, seed {seed})", path)
        out[seed] = paths
    return out


# What ours needs to train on exactly what the example trains on (benchmarks/equal_updates.py).
MATCHED_FLAGS = ["--zero-initial-memory", "--data-layout", "fairseq_example"]


def quality_plan(args, init: Dict[int, Dict[str, str]]) -> List[Dict]:
    """The quality runs in order. The example's time-budget run (seed 1, from its fresh model)
    fixes the number of updates N of every "updates" run."""
    def run(label, impl, seed, budget, init_from=None, matched=False):
        return {"label": label, "impl": impl, "seed": seed, "budget": budget, "init_from": init_from,
                "matched": matched}

    plan = [run("example-time", EXAMPLE, 1, "time", init[1][EXAMPLE])]
    plan += [run(f"example-updates-seed{s}", EXAMPLE, s, "updates", init[s][EXAMPLE])
             for s in range(2, args.matched_seeds + 1)]
    plan += [run(f"ours-matched-seed{s}", OURS, s, "updates", init[s][OURS], matched=True)
             for s in range(1, args.matched_seeds + 1)]
    plan += [run(f"ours-updates-seed{s}", OURS, s, "updates") for s in range(1, args.quality_seeds + 1)]
    plan.append(run("ours-time", OURS, 1, "time"))
    return plan


def measure_quality(args, sides: Dict[str, Side], data: str, work: str, results: Dict) -> None:
    threads = args.threads
    hours = args.budget_minutes / 60.0
    init = initial_weights(sides, data, work, args, list(range(1, args.matched_seeds + 1)), threads)
    test_split = "testhead" if args.quality_test_tokens > 0 else "test"
    runs = {}
    for plan in quality_plan(args, init):
        label, name = plan["label"], plan["impl"]
        side = sides[name]
        extra = (["--stop-time-hours", f"{hours:.6f}"] if plan["budget"] == "time"
                 else ["--max-update", str(runs["example-time"]["updates"])])
        if plan["init_from"] is not None:
            extra += ["--finetune-from-model", plan["init_from"]]
        if plan["matched"]:
            extra += MATCHED_FLAGS
        save = os.path.join(work, f"quality-{label}")
        path = save + ".out"
        log(f"quality: training {label} ({' '.join(extra)})")
        res = check(run_cmd([side.cli("fairseq-train"), data, *quality_flags(args, plan["seed"]),
                             "--user-dir", side.user_dir, "--save-dir", save, *extra], path, threads),
                    f"fairseq-train {label}", path)
        runs[label] = {"impl": name, "budget": plan["budget"], "seed": plan["seed"],
                       "matched": plan["matched"],
                       "init": "own" if plan["init_from"] is None or name == EXAMPLE else "example",
                       "updates": final_updates(res["output"]), "train_wall_s": res["wall_s"],
                       "curve": train_log(res["output"]), "checkpoint": os.path.join(save, "checkpoint_last.pt"),
                       "log": os.path.relpath(path, ROOT)}
        runs[label]["name"] = run_name(runs[label])
    for label, run in runs.items():
        run["test"] = {mem_name: evaluate_quality(args, sides[run["impl"]], data, work, label, run,
                                                  mem_name, test_split)
                       for mem_name in QUALITY_MEMORIES}
    results["quality"] = {"budget_minutes": args.budget_minutes, "flags": quality_flags(args),
                          "tokens_per_sample": TINY_TPS, "test_split": test_split,
                          "eval_streams": args.quality_eval_streams, "runs": runs,
                          "agreement_tolerance": args.agreement_tolerance,
                          "initial_weights": {str(s): {k: os.path.relpath(v, ROOT) for k, v in p.items()}
                                              for s, p in init.items()}}


def evaluate_quality(args, side: Side, data: str, work: str, label: str, run: Dict, mem_name: str,
                     test_split: str) -> Dict:
    """fairseq-eval-lm test perplexity of one run's checkpoint at one of QUALITY_MEMORIES (a
    matched run of ours reads the example's batches, so both score the same targets)."""
    mem = QUALITY_MEMORIES[mem_name]
    path = os.path.join(work, f"quality-{label}-eval-{mem_name}.out")
    log(f"quality: fairseq-eval-lm {label}, {mem_name} memory")
    overrides = (f'{{"mem_len": {mem["mem_len"]}, "clamp_len": {mem["clamp_len"]}, '
                 f'"same_length": {mem["same_length"]}}}')
    layout = ["--data-layout", "fairseq_example"] if run["matched"] else []
    res = check(run_cmd([side.cli("fairseq-eval-lm"), data, "--path", run["checkpoint"],
                         "--user-dir", side.user_dir, "--task", "truncated_bptt_lm",
                         "--gen-subset", test_split, "--cpu", *layout,
                         "--batch-size", str(args.quality_eval_streams),
                         "--required-batch-size-multiple", "1",
                         "--tokens-per-sample", str(mem["tps"]), "--model-overrides", overrides],
                        path, threads=args.threads), f"fairseq-eval-lm {label} {mem_name}", path)
    scored = parse_eval_lm(res["output"])
    return {"ppl": scored["ppl"], "loss_base2": scored["loss"], "tokens": scored["tokens"], **mem}


def run_name(run: Dict) -> str:
    if run["impl"] == EXAMPLE:
        if run["budget"] == "time":
            return f"example, time budget (seed {run['seed']})"
        return f"example, same updates, seed {run['seed']}"
    if run["budget"] == "time":
        return "ours, same time budget"
    if run.get("matched"):
        return f"ours matched, seed {run['seed']}"
    return f"ours, same updates, defaults, own init seed {run['seed']}"


def matched_pairs(runs: Dict, memory: str = "short") -> List[Pair]:
    """The matched (example, ours) test perplexities per seed."""
    example = {r["seed"]: r["test"][memory]["ppl"] for r in runs.values() if r["impl"] == EXAMPLE}
    return [Pair(r["seed"], example[r["seed"]], r["test"][memory]["ppl"])
            for r in runs.values() if r.get("matched") and r["seed"] in example]


def equal_updates_report(quality: Dict, memory: str = "short") -> str:
    """The verdict paragraph, and how far the matched training curves came apart (per scored token)."""
    runs = quality["runs"]
    text = verdict(matched_pairs(runs, memory), quality["agreement_tolerance"]).text
    example = {r["seed"]: r for r in runs.values() if r["impl"] == EXAMPLE}
    gaps = [largest_curve_gap_bits(example[r["seed"]]["curve"], r["curve"], quality["tokens_per_sample"])
            for r in runs.values() if r.get("matched") and r["seed"] in example]
    gaps = [g for g in gaps if g is not None]
    if gaps:
        text += (f" Training curves of the pairs (per scored token, at the logged updates): at most "
                 f"{max(gaps):.3f} bits apart.")
    defaults = sorted(r["test"][memory]["ppl"] for r in runs.values()
                      if r["impl"] == OURS and r["budget"] == "updates" and not r.get("matched"))
    if defaults:
        text += (f" Ours with its defaults (own init, empty initial memory, every token a target) at "
                 f"the same updates: {', '.join(f'{x:.2f}' for x in defaults)} (not part of the verdict).")
    return text


# ------------------------------------------------------------------------------------- report
def fmt(x, digits=0):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:,.{digits}f}"


def eval_label(entry: Dict) -> str:
    """An eval-lm row's implementation, with ours' segments per step (when its log said)."""
    if entry["impl"] == EXAMPLE:
        return "fairseq example (HF TransfoXL)"
    if entry.get("segments") is not None:
        return f"ours, --eval-segments-per-step {entry['segments']}"
    steps_of = entry.get("steps_of")
    if steps_of is None:
        return "ours"
    return f"ours ({steps_of} segment{'' if steps_of == 1 else 's'} per step)"


def report(results: Dict) -> str:
    lines = []
    mach = results["machine"]
    lines.append(f"Machine: {mach['cpu']}, {mach['logical_cpus']} logical CPUs, "
                 f"{fmt(mach['memory_gib'], 1)} GiB; {mach['threads']} threads; load average at start "
                 f"{mach['load_average_start'][0]:.2f}, at end {mach['load_average_end'][0]:.2f}")
    versions = {}
    for side in results.get("train", {}).values():
        versions.update({k: v for k, v in side["versions"].items()})
    if versions:
        lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    lines.append(f"Run: {results['started']} .. {results['finished']} UTC, command: `{results['command']}`")
    lines.append("")
    if "train" in results:
        for row_dtype, mp in results.get("matmul_peaks", {"fp32": results["matmul_peak"]}).items():
            lines.append(f"Measured {mp.get('dtype', 'float32')} matmul peak (the denominator of the "
                         f"{row_dtype} rows' % of peak): {mp['flops_per_s'] / 1e9:.1f} GFLOP/s "
                         f"({mp['best_size']}^3 torch.mm, {mp['threads']} threads, torch CPU capability "
                         f"{mp.get('cpu_capability', '?')}; best of "
                         + ", ".join(f"{x / 1e9:.1f}" for x in (mp.get("measurements") or [])) + " at start/end)")
        lines.append("")
        ex, us = results["train"][EXAMPLE], results["train"][OURS]
        lines.append(f"Training, forward+backward (batch {BENCH_BATCH} x {BENCH_TPS} tokens, mem_len "
                     f"{BENCH_MODEL['mem_len']}, fp32; best of {len(ex['tokens_per_s_rounds'])} rounds)")
        lines.append("")
        lines.append("| implementation | params | tokens/s | rounds tokens/s | peak RSS MiB (before steps) | "
                     "model GFLOP/step | executed GFLOP/step | model GFLOP/s | % of matmul peak |")
        lines.append("|---|---:|---:|---|---:|---:|---:|---:|---:|")
        for name, label in ((EXAMPLE, "fairseq example (HF TransfoXL)"), (OURS, "ours")):
            t = results["train"][name]
            lines.append(
                f"| {label} | {t['params']:,} | {fmt(t['tokens_per_s'])} | "
                f"{', '.join(fmt(x) for x in t['tokens_per_s_rounds'])} | "
                f"{fmt(t['peak_rss_mb'])} ({fmt(t['rss_before_mb'])}) | {t['model_flops_per_step'] / 1e9:.2f} | "
                f"{t['executed_flops_per_step'] / 1e9:.2f} | {t['model_flops_per_s'] / 1e9:.1f} | "
                f"{100 * t['fraction_of_peak']:.1f} |")
        ratio = us["tokens_per_s"] / ex["tokens_per_s"]
        lines.append("")
        lines.append(f"Training speed, ours / example: **{ratio:.2f}x** (target >= {TRAIN_TARGET:g}x: "
                     f"{'met' if ratio >= TRAIN_TARGET else 'NOT met'})")
        lines.append("")
    if "eval" in results:
        lines.append(f"fairseq-eval-lm (tokens_per_sample {EVAL_TPS}, mem_len {EVAL_MEM}, clamp_len "
                     f"{EVAL_CLAMP}, same_length; speedtest split; checkpoint of the benchmark size)")
        lines.append("")
        lines.append("| implementation | batch (streams) | dtype | tokens | tokens/s | rounds tokens/s | "
                     "peak RSS MiB (process) | model GFLOP/s | % of matmul peak (same dtype) | note |")
        lines.append("|---|---:|---|---:|---:|---|---:|---:|---:|---|")
        base = {}
        for e in results["eval"]:
            label = eval_label(e)
            if "error" in e:
                lines.append(f"| {label} | {e['batch']} | {e['dtype']} | - | failed | - | - | - | - | "
                             f"{e['error'].replace('|', '/')} |")
                continue
            if e["dtype"] == "fp32" and e["batch"] == 1 and e.get("segments") is None:
                base[e["impl"]] = e["tokens_per_s"]
            lines.append(f"| {label} | {e['batch']} | {e['dtype']} | {e['tokens']:,} | {fmt(e['tokens_per_s'])} | "
                         f"{', '.join(fmt(x) for x in e['tokens_per_s_rounds'])} | {fmt(e['max_rss_mb'])} | {e['model_flops_per_s'] / 1e9:.1f} | "
                         f"{100 * e['fraction_of_peak']:.1f} | {e.get('note', '')} |")
        lines.append("| ours | 1 | fp16 | - | not measured | - | - | - | - | fairseq's --fp16 is a GPU "
                     "mode; not measured on CPU |")
        if EXAMPLE in base and OURS in base:
            ratio = base[OURS] / base[EXAMPLE]
            lines.append("")
            lines.append(f"fairseq-eval-lm speed at batch 1, fp32, ours / example: **{ratio:.2f}x** "
                         f"(target >= {EVAL_TARGET:g}x: {'met' if ratio >= EVAL_TARGET else 'NOT met'})")
        lines.append("")
    if "quality" in results:
        q = results["quality"]
        split = ("the whole test split" if q["test_split"] == "test" else
                 f"the first {q['runs']['ours-time']['test']['short']['tokens']:,} tokens of the test split")
        lines.append(f"Quality at equal budget (perplexity by fairseq-eval-lm on {split}, "
                     f"{q['eval_streams']} streams; budget {q['budget_minutes']:g} min wall-clock per run)")
        lines.append("")
        sm, lm_ = QUALITY_MEMORIES["short"], QUALITY_MEMORIES["long"]
        lines.append(f"Model: configs/tiny_cpu.yaml's ({TINY_MODEL['n_layer']} layers, d_model {TINY_MODEL['d_model']}, "
                     f"{TINY_MODEL['n_head']} heads x {TINY_MODEL['d_head']}, d_inner {TINY_MODEL['d_inner']}, "
                     f"batch {TINY_BATCH} x {TINY_TPS} tokens, mem_len {TINY_MODEL['mem_len']}); identical flags "
                     "on both sides: `" + " ".join(q["flags"]) + "`")
        lines.append("")
        init = q["initial_weights"]
        first = init[min(init, key=int)]
        lines.append(f"Initial weights: the example's run of seed k starts from its own fresh model under "
                     f"these flags with --seed k (what its fairseq-train starts from; seed 1: `{first[EXAMPLE]}`), "
                     "written at update 0 by benchmarks/initial_checkpoint.py; ours matched: the same weights "
                     f"converted (seed 1: `{first[OURS]}`, truncated_bptt/checkpoint_conversion.py), trained and "
                     f"scored with `{' '.join(MATCHED_FLAGS)}` (HuggingFace's zero initial memory and the "
                     "example's batches; \"ours matched\"); both loaded with --finetune-from-model. "
                     "\"defaults, own init seed k\": "
                     "our fairseq-train's own initialisation with --seed k and our defaults.")
        lines.append("")
        lines.append("| run | implementation | updates | train wall s | test ppl, short memory "
                     f"(tps {sm['tps']}, mem {sm['mem_len']}) | test ppl, long memory "
                     f"(tps {lm_['tps']}, mem {lm_['mem_len']}, clamp {lm_['clamp_len']}, same_length) |")
        lines.append("|---|---|---:|---:|---:|---:|")
        for run in q["runs"].values():
            lines.append(f"| {run['name']} | {run['impl']} | {run['updates']:,} | {run['train_wall_s']:.0f} | "
                         f"{run['test']['short']['ppl']:.2f} | {run['test']['long']['ppl']:.2f} |")
        lines.append("")
        lines.append(equal_updates_report(q))
        if results.get("plot"):
            lines.append("")
            lines.append(f"Plot: {results['plot']}")
    return "\n".join(lines) + "\n"


def rewrite_report(json_path: str) -> None:
    """Write the .md beside a results .json again from its measurements, with today's report
    (e.g. after the targets changed); nothing is measured."""
    with open(json_path) as f:
        results = json.load(f)
    md_path = os.path.splitext(json_path)[0] + ".md"
    with open(md_path, "w") as f:
        f.write(report(results))
    log(f"rewrote {md_path} from {json_path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report-from", metavar="JSON",
                        help="only write the .md of an earlier results .json again (no measurement)")
    parser.add_argument("--text-dir", default=os.path.join(os.path.dirname(ROOT), "shared", "data", "wikitext-2"),
                        help="directory holding train.txt, valid.txt, test.txt")
    parser.add_argument("--parts", default="speed,quality", help="comma-separated: speed, quality")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternating training-speed rounds per side")
    parser.add_argument("--eval-rounds", type=int, default=3,
                        help="alternating eval-lm rounds of the batch-1 fp32 pair")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--eval-speed-tokens", type=int, default=16384,
                        help="size of the speedtest split (the start of test.txt) scored for eval-lm speed")
    parser.add_argument("--eval-streams", type=int, default=8, help="batch > 1 of the eval-lm speed runs")
    parser.add_argument("--budget-minutes", type=float, default=3.0, help="quality: wall-clock budget per run")
    parser.add_argument("--quality-lr", type=float, default=0.003, help="the tiny recipe's")
    parser.add_argument("--quality-eval-streams", type=int, default=8,
                        help="streams (batch) of the quality runs' fairseq-eval-lm")
    parser.add_argument("--quality-test-tokens", type=int, default=0,
                        help="score only the first ~N tokens of the test text (0: all of it)")
    parser.add_argument("--matched-seeds", type=int, default=3,
                        help="equal updates: matched pairs for seeds 1..N (the example from its fresh "
                             "model with --seed k, ours from the same weights with the example's "
                             "initial memory and batches; seed 1's example run is its time-budget run)")
    parser.add_argument("--agreement-tolerance", type=float, default=0.03,
                        help="equal-updates verdict: the largest ours / example - 1 of test perplexity "
                             "a matched pair may show for the two to agree")
    parser.add_argument("--quality-seeds", type=int, default=3,
                        help="also train ours with its defaults at the example's number of updates from "
                             "its own init with seeds 1..N (context, not part of the verdict; 0: none)")
    parser.add_argument("--ours-venv", default=os.path.join(ROOT, ".venv", "py310"))
    parser.add_argument("--example-venv", default=os.path.join(ROOT, ".venv", "bench-example"))
    parser.add_argument("--out-dir", default=os.path.join(BENCH, "results"))
    args = parser.parse_args()
    if args.report_from:
        return rewrite_report(args.report_from)
    parts = set(args.parts.split(","))
    if not parts <= {"speed", "quality"}:
        raise SystemExit(f"compare: --parts takes speed and/or quality, got {args.parts}")
    if args.matched_seeds < 1:
        raise SystemExit(f"compare: --matched-seeds must be >= 1, got {args.matched_seeds}")
    if args.quality_seeds < 0:
        raise SystemExit(f"compare: --quality-seeds must be >= 0, got {args.quality_seeds}")
    if not 0 < args.agreement_tolerance < 1:
        raise SystemExit(f"compare: --agreement-tolerance must be in (0, 1), got {args.agreement_tolerance}")

    started = datetime.datetime.utcnow()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    work = os.path.join(ROOT, "runs", "bench", stamp)
    os.makedirs(work, exist_ok=True)
    sides = {OURS: Side(OURS, args.ours_venv, os.path.join(ROOT, "truncated_bptt")),
             EXAMPLE: Side(EXAMPLE, args.example_venv)}
    results = {"started": f"{started:%Y-%m-%d %H:%M:%S}",
               "command": " ".join(["python -m benchmarks.compare"] + sys.argv[1:]),
               "machine": machine_description(args.threads), "work_dir": os.path.relpath(work, ROOT),
               "sides": {k: {"venv": os.path.relpath(s.venv, ROOT), "user_dir": s.user_dir} for k, s in sides.items()}}
    data = prepare_data(args.text_dir, args.eval_speed_tokens, args.quality_test_tokens, sides[OURS])
    results["data"] = {"text_dir": os.path.abspath(args.text_dir), "data_bin": os.path.relpath(data, ROOT)}

    if "speed" in parts:
        measure_speed(args, sides, data, work, results)
    if "quality" in parts:
        measure_quality(args, sides, data, work, results)
    os.makedirs(args.out_dir, exist_ok=True)
    base = os.path.join(args.out_dir, f"cpu-{stamp}")
    if "quality" in parts:
        from benchmarks.quality_plot import plot_quality

        plot_quality(results["quality"], base + ".png")
        results["plot"] = os.path.relpath(base + ".png", ROOT)
    results["machine"]["load_average_end"] = os.getloadavg()
    results["finished"] = f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M:%S}"
    table = report(results)
    with open(base + ".json", "w") as f:
        json.dump(results, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(table)
    print()
    print(table)
    log(f"wrote {os.path.relpath(base, ROOT)}.md / .json; logs in {os.path.relpath(work, ROOT)}")


if __name__ == "__main__":
    main()
