"""The GPU benchmark behind ``bash benchmarks/gpu.sh``: throughput of the WikiText-103 recipes on
this machine's GPUs, beside NVIDIA's published figures.

Everything runs through the commands users type, on a synthetic corpus with WikiText-103's
vocabulary size (so the adaptive softmax has the recipes' clusters) made once under runs/gpu-bench/:

- training tokens/s of ``configs/wt103_base.yaml`` (32 streams x 192 tokens per GPU) and
  ``configs/wt103_large.yaml`` (16 x 384) through ``fairseq-hydra-train``, in TF32, fp16 and bf16,
  with and without ``--compile`` (``model.compile``); fairseq's own ``wps`` over the logged
  intervals after the first (compilation, warm-up), and the peak GPU memory fairseq reports;
- ``fairseq-eval-lm`` tokens/s at batch 1, 64 tokens per segment, mem_len 640, clamp_len 400,
  same_length, on a base-size checkpoint; and the TorchScript scorer (``truncated-bptt-export``)
  timed on the same tokens by ``benchmarks/torchscript_speed.py``;
- with several GPUs, the base recipe on one GPU and on all of them (``torchrun``).

``--tiny`` runs the same pipeline on the CPU with a tiny model in a few minutes (fp32 and bf16;
fp16 is a GPU mode): the test suite runs it so the script works the first time it meets a GPU.
Results: ``<out>/gpu-<UTC time>.md`` and ``.json`` (``--out``, default benchmarks/results).
"""
import argparse
import datetime
import json
import os
import statistics
import sys
from typing import Dict, List, Optional

import numpy as np

from benchmarks.compare import run_cmd
from examples.fairseq_logs import parse_eval_lm, parse_record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
WT103_VOCABULARY = 267_744  # fairseq's dictionary of WikiText-103 (with the 4 specials)

# NVIDIA DeepLearningExamples' Transformer-XL for PyTorch, A100 40GB, per GPU (their README).
NVIDIA = [
    ("base, batch 32, training, TF32", 41_527),
    ("base, batch 32, training, mixed precision", 59_961),
    ("large, batch 16, training, mixed precision", 25_084),
    ("base, batch 1, inference, TorchScript", 6_936),
]


def log(message: str) -> None:
    print(f"[gpu-bench {datetime.datetime.utcnow():%H:%M:%S}] {message}", flush=True)


# ----------------------------------------------------------------------------------- settings
def settings(tiny: bool, updates: int) -> Dict:
    """What to run: recipes (hydra config + overrides), precisions (those also with --compile),
    corpus size, eval split. Tiny: compiled in fp32 only (a cold compile costs a minute on CPU)."""
    if tiny:
        model = ["model.n_layer=2", "model.d_model=16", "model.n_head=2", "model.d_head=8",
                 "model.d_inner=32", "model.mem_len=8", "model.cutoffs=[50,150]"]
        return {
            "device": "cpu", "vocabulary": 300, "train_tokens": 20_000, "eval_tokens": 1_000,
            "recipes": {"tiny": ("tiny_cpu", model + ["task.tokens_per_sample=16",
                                                      "dataset.batch_size=4"])},
            "precisions": ["fp32", "bf16"], "compiled": ["fp32"], "updates": updates or 12,
            "log_interval": 3,
            "eval": {"tokens_per_sample": 16, "mem_len": 32, "clamp_len": 24},
        }
    return {
        "device": "cuda", "vocabulary": WT103_VOCABULARY, "train_tokens": 3_000_000,
        "eval_tokens": 100_000,
        "recipes": {"wt103_base": ("wt103_base", []), "wt103_large": ("wt103_large", [])},
        "precisions": ["tf32", "fp16", "bf16"], "compiled": ["tf32", "fp16", "bf16"],
        "updates": updates or 200, "log_interval": 20,
        "eval": {"tokens_per_sample": 64, "mem_len": 640, "clamp_len": 400},
    }


PRECISION_OVERRIDES = {
    "tf32": ["common.fp16=false", "common.fp16_no_flatten_grads=false"],
    "fp32": ["common.fp16=false", "common.fp16_no_flatten_grads=false"],
    "fp16": ["common.fp16=true", "common.fp16_no_flatten_grads=true"],
    "bf16": ["common.fp16=false", "common.fp16_no_flatten_grads=false", "common.bf16=true"],
}


# --------------------------------------------------------------------------------------- data
def make_corpus(work: str, vocabulary: int, train_tokens: int, eval_tokens: int) -> str:
    """Zipf-distributed words over ``vocabulary`` types (fairseq's 4 specials included), binarized
    by fairseq-preprocess with a dictionary in frequency order: train, valid and the eval split."""
    data = os.path.join(work, f"data-{vocabulary}-{train_tokens}")
    if os.path.isfile(os.path.join(data, "test.idx")):
        return data
    text = os.path.join(work, "text")
    os.makedirs(text, exist_ok=True)
    n_words = vocabulary - 4
    rng = np.random.default_rng(0)
    probs = 1.0 / np.arange(1, n_words + 1)
    probs /= probs.sum()
    with open(os.path.join(text, "dict.txt"), "w") as f:
        f.writelines(f"w{i} {n_words - i}\n" for i in range(n_words))
    for split, n in (("train", train_tokens), ("valid", eval_tokens // 4), ("test", eval_tokens)):
        ids = rng.choice(n_words, size=n, p=probs)
        with open(os.path.join(text, f"{split}.txt"), "w") as f:
            for line in np.array_split(ids, max(1, n // 20)):
                f.write(" ".join(f"w{i}" for i in line) + "\n")
    log(f"binarizing a synthetic corpus of {vocabulary:,} types into {data}")
    run_checked([os.path.join(BIN, "fairseq-preprocess"), "--only-source", "--srcdict",
                 os.path.join(text, "dict.txt"), "--trainpref", os.path.join(text, "train.txt"),
                 "--validpref", os.path.join(text, "valid.txt"), "--testpref",
                 os.path.join(text, "test.txt"), "--destdir", data, "--workers",
                 str(min(8, os.cpu_count() or 1))], os.path.join(work, "preprocess.log"))
    return data


def run_checked(cmd: List[str], log_path: str) -> Dict:
    """Run a command (output to ``log_path``); stop with its last lines if it fails."""
    threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or (os.cpu_count() or 1)
    result = run_cmd(cmd, log_path, threads, pythonpath=ROOT)  # this checkout's plugin everywhere
    if result["rc"] != 0:
        tail = "\n".join(result["output"].splitlines()[-20:])
        raise SystemExit(f"gpu-bench: {os.path.basename(cmd[0])} failed (exit {result['rc']}); "
                         f"log {log_path}:\n{tail}")
    return result


# ----------------------------------------------------------------------------------- training
def train(work: str, data: str, recipe: str, overrides: List[str], precision: str, compile_: bool,
          cfg: Dict, name: str, launcher: Optional[List[str]] = None, save: bool = False) -> Dict:
    """One fairseq-hydra-train run of ``recipe``: tokens/s (median of fairseq's ``wps`` over the
    logged intervals after the first) and peak memory."""
    save_dir = os.path.join(work, name)
    args = [f"task.data={data}", f"checkpoint.save_dir={save_dir}",
            f"common.user_dir={os.path.join(ROOT, 'truncated_bptt')}", "common.log_format=json",
            f"common.log_interval={cfg['log_interval']}", "common.log_file=null",
            f"optimization.max_update={cfg['updates']}", "lr_scheduler.warmup_updates=1",
            "dataset.disable_validation=true",
            f"checkpoint.no_save={'false' if save else 'true'}", "checkpoint.save_interval_updates=0",
            f"model.compile={'true' if compile_ else 'false'}", *PRECISION_OVERRIDES[precision],
            *overrides]
    if cfg["device"] == "cpu":
        args.append("common.cpu=true")
    cmd = (launcher or []) + [os.path.join(BIN, "fairseq-hydra-train"), "--config-dir",
                              os.path.join(ROOT, "configs"), "--config-name", recipe, *args]
    log(f"training {name}")
    result = run_checked(cmd, os.path.join(work, f"{name}.log"))
    records = [r for r in map(parse_record, result["output"].splitlines()) if r and r["kind"] == "train"]
    wps = [r["wps"] for r in records[1:]] or [r["wps"] for r in records]
    peak = memory_peak_gib(records) if cfg["device"] == "cuda" else result["max_rss_mb"] / 1024
    return {"name": name, "recipe": recipe, "precision": precision, "compile": compile_,
            "tokens_per_s": statistics.median(wps), "tokens_per_s_intervals": wps,
            "peak_memory_gib": peak, "memory_what": "GPU (fairseq's gb_free)" if cfg["device"] == "cuda"
            else "process peak RSS", "compile_failed": "torch.compile failed" in result["output"],
            "log": os.path.relpath(os.path.join(work, f"{name}.log"), ROOT)}


def memory_peak_gib(records: List[Dict]) -> Optional[float]:
    """Peak allocated GPU memory: fairseq logs ``gb_free`` = total - max allocated (per interval)."""
    import torch

    free = [r["gb_free"] for r in records if "gb_free" in r]
    if not free or not torch.cuda.is_available():
        return None
    total = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
    return total - min(free)


def training_runs(work: str, data: str, cfg: Dict) -> List[Dict]:
    runs = []
    for shape, (recipe, overrides) in cfg["recipes"].items():
        for precision in cfg["precisions"]:
            for compile_ in (False, True) if precision in cfg["compiled"] else (False,):
                name = f"train-{shape}-{precision}{'-compile' if compile_ else ''}"
                save = precision == cfg["precisions"][0] and not compile_ and shape != "wt103_large"
                runs.append(train(work, data, recipe, overrides, precision, compile_, cfg, name,
                                  save=save))
    return runs


def scaling_runs(work: str, data: str, cfg: Dict, gpus: int) -> List[Dict]:
    """The base recipe (its own precision) on one GPU and on all ``gpus`` (torchrun)."""
    recipe, overrides = cfg["recipes"]["wt103_base"]
    single = train(work, data, recipe, overrides + ["distributed_training.ddp_backend=legacy_ddp"],
                   "fp16", False, cfg, "scaling-1gpu")
    launcher = [os.path.join(BIN, "torchrun"), "--nproc_per_node", str(gpus)]
    multi = train(work, data, recipe, overrides + ["distributed_training.ddp_backend=legacy_ddp"],
                  "fp16", False, cfg, f"scaling-{gpus}gpu", launcher=launcher)
    multi["gpus"], single["gpus"] = gpus, 1
    multi["scaling_efficiency"] = multi["tokens_per_s"] / (gpus * single["tokens_per_s"])
    return [single, multi]


# --------------------------------------------------------------------------------- evaluation
def evaluation_runs(work: str, data: str, cfg: Dict, checkpoint: str) -> List[Dict]:
    """fairseq-eval-lm at batch 1 (eager) and the TorchScript scorer on the same split."""
    ev = cfg["eval"]
    overrides = repr({"mem_len": ev["mem_len"], "clamp_len": ev["clamp_len"], "same_length": True})
    device = ["--cpu"] if cfg["device"] == "cpu" else []
    runs = []
    for precision in ("fp32", "fp16" if cfg["device"] == "cuda" else "bf16"):
        extra = {"fp32": [], "fp16": ["--fp16"], "bf16": ["--bf16"]}[precision]
        path = os.path.join(work, f"eval-lm-{precision}.log")
        log(f"fairseq-eval-lm, batch 1, {precision}")
        out = run_checked([os.path.join(BIN, "fairseq-eval-lm"), data, "--path", checkpoint,
                           "--user-dir", os.path.join(ROOT, "truncated_bptt"), "--task",
                           "truncated_bptt_lm", "--gen-subset", "test", "--batch-size", "1",
                           "--tokens-per-sample", str(ev["tokens_per_sample"]),
                           "--model-overrides", overrides, *device, *extra], path)
        scored = parse_eval_lm(out["output"])
        runs.append({"name": f"eval-lm-eager-{precision}", "precision": precision,
                     "tokens_per_s": scored["tokens_per_s"], "loss": scored["loss"],
                     "peak_memory_gib": out["max_rss_mb"] / 1024,
                     "log": os.path.relpath(path, ROOT)})
    runs.append(torchscript_run(work, data, cfg, checkpoint))
    return runs


def torchscript_run(work: str, data: str, cfg: Dict, checkpoint: str) -> Dict:
    ev = cfg["eval"]
    scorer = os.path.join(work, "scorer.ts")
    dtype = "float32" if cfg["device"] == "cpu" else "float16"
    log(f"truncated-bptt-export ({dtype}) and the TorchScript scorer, batch 1")
    run_checked([sys.executable, "-m", "truncated_bptt.export_cli", checkpoint, scorer, "--data",
                 data, "--mem-len", str(ev["mem_len"]), "--clamp-len", str(ev["clamp_len"]),
                 "--same-length", "true", "--dtype", dtype], os.path.join(work, "export.log"))
    path = os.path.join(work, "torchscript.log")
    out = run_checked([sys.executable, "-m", "benchmarks.torchscript_speed",
                       scorer, os.path.join(data, "test"), "--device", cfg["device"],
                       "--tokens-per-sample", str(ev["tokens_per_sample"])], path)
    result = json.loads(out["output"].strip().splitlines()[-1].split("RESULT ", 1)[1])
    return {"name": f"torchscript-{dtype}", "precision": dtype, **result,
            "log": os.path.relpath(path, ROOT)}


# ------------------------------------------------------------------------------------ results
def machine(device: str) -> Dict:
    import fairseq
    import torch

    info = {"torch": torch.__version__, "fairseq": fairseq.__version__, "device": device,
            "cpu_count": os.cpu_count()}
    if device == "cuda":
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
    return info


def ours_for(nvidia_row: str, runs: List[Dict]) -> str:
    """Our figure measured in the same setting as one of NVIDIA's rows, or '-'."""
    wanted = {"base, batch 32, training, TF32": "train-wt103_base-tf32",
              "base, batch 32, training, mixed precision": "train-wt103_base-fp16",
              "large, batch 16, training, mixed precision": "train-wt103_large-fp16",
              "base, batch 1, inference, TorchScript": "torchscript-float16"}[nvidia_row]
    found = [r for r in runs if r["name"] == wanted]
    return f"{found[0]['tokens_per_s']:,.0f}" if found else "-"


def markdown(results: Dict) -> str:
    m = results["machine"]
    lines = [f"# GPU benchmark, {results['time']} UTC", "",
             f"Machine: {', '.join(m.get('gpus', ['CPU']))}; torch {m['torch']}, fairseq "
             f"{m['fairseq']}. Command: `{results['command']}`. Corpus: synthetic, "
             f"{results['vocabulary']:,} types"
             f"{' (WikiText-103' + chr(39) + 's dictionary size)' if results['vocabulary'] == WT103_VOCABULARY else ''}"
             ", Zipf-distributed.", "",
             "## Training (fairseq-hydra-train of the recipe; tokens/s per process, median of "
             "fairseq's wps over the logged intervals after the first)", "",
             "| run | precision | --compile | tokens/s | intervals | peak memory GiB |",
             "|---|---|---|---:|---|---:|"]
    for r in results["training"]:
        note = " (compile failed: eager)" if r.get("compile_failed") else ""
        lines.append(f"| {r['name']} | {r['precision']} | {'yes' if r['compile'] else 'no'}{note} | "
                     f"{r['tokens_per_s']:,.0f} | {', '.join(f'{x:,.0f}' for x in r['tokens_per_s_intervals'])} | "
                     f"{_gib(r['peak_memory_gib'])} |")
    lines += ["", "## Inference at batch 1 (64-token segments, mem_len 640, clamp_len 400, "
              "same_length; tiny mode: its own sizes)", "",
              "| run | precision | tokens/s | loss (base 2) | peak memory GiB |", "|---|---|---:|---:|---:|"]
    for r in results["inference"]:
        lines.append(f"| {r['name']} | {r['precision']} | {r['tokens_per_s']:,.0f} | {r['loss']:.4f} | "
                     f"{_gib(r['peak_memory_gib'])} |")
    if results["scaling"]:
        lines += ["", "## Scaling (wt103_base, fp16)", "", "| GPUs | tokens/s (all) | efficiency |",
                  "|---:|---:|---:|"]
        for r in results["scaling"]:
            lines.append(f"| {r['gpus']} | {r['tokens_per_s']:,.0f} | "
                         f"{100 * r.get('scaling_efficiency', 1.0):.0f} % |")
    lines += ["", "## NVIDIA's published figures (DeepLearningExamples, A100 40GB, per GPU) and ours",
              "", "| setting | NVIDIA tokens/s | ours on this machine |", "|---|---:|---:|"]
    for row, value in NVIDIA:
        lines.append(f"| {row} | {value:,} | {ours_for(row, results['training'] + results['inference'])} |")
    return "\n".join(lines) + "\n"


def _gib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


# --------------------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the CPU smoke mode (a few minutes)")
    parser.add_argument("--updates", type=int, default=0, help="updates per training run")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--work", default=os.path.join(ROOT, "runs", "gpu-bench"))
    args = parser.parse_args(argv)
    cfg = settings(args.tiny, args.updates)
    gpus = 0
    if cfg["device"] == "cuda":
        import torch

        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise SystemExit("gpu-bench: no CUDA device; run with --tiny for the CPU smoke mode")
    stamp = datetime.datetime.utcnow().strftime("%Y%m%d-%H%M%S")
    work = os.path.join(args.work, stamp)
    os.makedirs(work, exist_ok=True)
    data = make_corpus(args.work, cfg["vocabulary"], cfg["train_tokens"], cfg["eval_tokens"])
    training = training_runs(work, data, cfg)
    checkpoint = os.path.join(work, training[0]["name"], "checkpoint_last.pt")
    results = {"time": stamp, "command": " ".join(["benchmarks/gpu.sh", *(argv or sys.argv[1:])]),
               "machine": machine(cfg["device"]), "vocabulary": cfg["vocabulary"],
               "training": training, "inference": evaluation_runs(work, data, cfg, checkpoint),
               "scaling": scaling_runs(work, data, cfg, gpus) if gpus > 1 else []}
    os.makedirs(args.out, exist_ok=True)
    prefix = os.path.join(args.out, f"{'cpu-tiny' if args.tiny else 'gpu'}-{stamp}")
    with open(prefix + ".json", "w") as f:
        json.dump(results, f, indent=1)
    with open(prefix + ".md", "w") as f:
        f.write(markdown(results))
    log(f"results: {prefix}.md")
    print(markdown(results))


if __name__ == "__main__":
    main()
