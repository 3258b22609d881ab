"""Time forward+backward training steps of a fairseq language model, built exactly as fairseq-train does.

Runs inside ONE environment and ONE implementation (ours, or fairseq's example: both register the
model `transformer_xl` and the task `truncated_bptt_lm`, so they can never share a process). The
fairseq arguments after `--` are parsed by fairseq's own training parser, so `--user-dir` decides
which implementation is built, and the model, task, criterion and batches come from their classes:

    python benchmarks/train_step_speed.py --warmup 3 --steps 20 -- DATA --user-dir truncated_bptt \
        --task truncated_bptt_lm --arch transformer_xl --tokens-per-sample 128 --batch-size 8 ...

A timed step is the task's own `train_step` (what fairseq's trainer calls: the criterion's forward,
then the backward) on the next training batch in stream order (memory carried over, as in training).
The optimizer is a stand-in that only runs the backward, and gradients are dropped between steps:
no optimizer update is timed, so both sides do exactly the same work outside model and criterion. Warm-up steps are not timed. Peak memory is
the process's peak resident set (VmHWM) over the timed steps, after resetting it before them.

Prints one JSON line (prefixed with `RESULT `) for benchmarks/compare.py.
"""
import argparse
import inspect
import json
import statistics
import sys
import time

import torch


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _BackwardOnly:
    """The part of a FairseqOptimizer that FairseqTask.train_step uses: the backward pass."""

    def backward(self, loss):
        loss.backward()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("fairseq_args", nargs=argparse.REMAINDER, help="-- then fairseq-train arguments")
    args = parser.parse_args()
    fairseq_args = args.fairseq_args[1:] if args.fairseq_args[:1] == ["--"] else args.fairseq_args

    torch.set_num_threads(args.threads)
    from fairseq import options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    train_parser = options.get_training_parser()
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(train_parser, fairseq_args))
    utils.import_user_module(cfg.common)
    torch.manual_seed(cfg.common.seed)

    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    task.load_dataset("train")
    batches = task.get_batch_iterator(
        dataset=task.dataset("train"),
        max_tokens=cfg.dataset.max_tokens,
        max_sentences=cfg.dataset.batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
        ignore_invalid_inputs=True,
        required_batch_size_multiple=cfg.dataset.required_batch_size_multiple,
        seed=cfg.common.seed,
        num_shards=1,
        shard_id=0,
        num_workers=cfg.dataset.num_workers,  # fairseq-train's default unless the flags set it
        epoch=1,
    ).next_epoch_itr(shuffle=False)
    model.train()
    criterion.train()

    vocab = len(task.target_dictionary)
    cutoffs = [c for c in cfg.model.cutoffs if c < vocab] + [vocab]
    boundaries = torch.tensor(cutoffs[:-1])
    cluster_counts = [0] * len(cutoffs)
    step_times, tokens = [], []
    rss_before = None
    peak_reset = False
    for i in range(args.warmup + args.steps):
        sample = next(batches)
        if i == args.warmup:
            rss_before = _rss_mb("VmRSS")
            peak_reset = _reset_peak_rss()
        start = time.perf_counter()
        task.train_step(sample, model, criterion, _BackwardOnly(), update_num=i)
        elapsed = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        if i >= args.warmup:
            step_times.append(elapsed)
            tokens.append(sample["net_input"]["src_tokens"].numel())
            target = sample["target"]
            real = target[target.ne(task.target_dictionary.pad())]
            counts = torch.bincount(torch.bucketize(real, boundaries, right=True), minlength=len(cutoffs))
            cluster_counts = [a + int(b) for a, b in zip(cluster_counts, counts.tolist())]

    # FLOPs the implementation really executes in one more step (torch's counter of matmul-like ops),
    # to set beside the analytic model FLOPs of benchmarks/flops.py.
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        task.train_step(next(batches), model, criterion, _BackwardOnly(), update_num=args.warmup + args.steps)
    model.zero_grad(set_to_none=True)

    import fairseq

    versions = {"torch": torch.__version__, "fairseq": fairseq.__version__}
    try:
        import transformers

        versions["transformers"] = transformers.__version__
    except ImportError:
        pass
    result = {
        "user_dir": cfg.common.user_dir,
        "model_class": f"{type(model).__module__}.{type(model).__name__}",
        "model_file": inspect.getfile(type(model)),
        "criterion_class": type(criterion).__name__,
        "params": sum(p.numel() for p in model.parameters()),
        "vocab": vocab,
        "threads": torch.get_num_threads(),
        "batch_shape": list(sample["net_input"]["src_tokens"].shape),
        "step_times": step_times,
        "tokens": tokens,
        "median_step_s": statistics.median(step_times),
        "tokens_per_s": statistics.median(tokens) / statistics.median(step_times),
        "mean_tokens_per_s": sum(tokens) / sum(step_times),
        "rss_before_mb": rss_before,
        "peak_rss_mb": _rss_mb("VmHWM") if peak_reset else None,
        "max_rss_mb": _rss_mb("VmHWM"),
        "cluster_counts": cluster_counts,
        "executed_flops_per_step": counter.get_total_flops(),
        "versions": versions,
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
