"""Plot training and validation perplexity against updates from fairseq training logs (PNG).

    python -m examples.plot_training_curves checkpoints/wt103_base/train.log --out curves.png
    python -m examples.plot_training_curves run_a.log run_b.log --labels lamb adam --out cmp.png

(from the repository root: ``examples`` is a package there).

Any log fairseq writes works: a captured stdout, ``--log-file`` / ``common.log_file``, or hydra's
``hydra_train.log``, in ``simple``, ``tqdm`` or ``json`` log format (see ``fairseq_logs.py``).
"""
import argparse
import os
from typing import Dict, List, Sequence

from examples.fairseq_logs import read_training_log
from examples.figures import finish_and_save


def plot_training_curves(runs: Dict[str, Dict[str, List[Dict]]], out_png: str,
                         title: str = "Transformer-XL training") -> str:
    """``runs``: label -> records of :func:`fairseq_logs.read_training_log`. Writes ``out_png``
    (train perplexity as lines, validation as markers, log scale) and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(r["train"] or r["valid"] for r in runs.values()):
        raise ValueError("no training or validation records in the logs: were they written by "
                         "fairseq-train / fairseq-hydra-train (any --log-format)?")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, records) in enumerate(runs.items()):
        color = f"C{i}"
        train = [r for r in records["train"] if "ppl" in r]
        valid = [r for r in records["valid"] if "ppl" in r]
        if train:
            ax.plot([r["num_updates"] for r in train], [r["ppl"] for r in train], color=color,
                    label=f"{label} train")
        if valid:
            ax.plot([r["num_updates"] for r in valid], [r["ppl"] for r in valid], "o--",
                    color=color, label=f"{label} valid")
    ax.set_yscale("log")
    ax.legend()
    return finish_and_save(fig, ax, "updates", title, out_png)


def main(argv: Sequence[str] = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", help="fairseq training log files")
    parser.add_argument("--labels", nargs="+", help="one legend label per log (default: file names)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--title", default="Transformer-XL training")
    args = parser.parse_args(argv)
    labels = args.labels or [os.path.basename(os.path.dirname(os.path.abspath(p))) + "/" +
                             os.path.basename(p) for p in args.logs]
    if len(labels) != len(args.logs):
        parser.error(f"--labels gives {len(labels)} labels for {len(args.logs)} logs")
    runs = {label: read_training_log(path) for label, path in zip(labels, args.logs)}
    print(plot_training_curves(runs, args.out, args.title))


if __name__ == "__main__":
    main()
