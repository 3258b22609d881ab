"""Plot of the equal-budget quality runs of benchmarks/compare.py (matplotlib, Agg backend: no display).

Left: training perplexity per scored token (from fairseq's train_inner log) against wall-clock
seconds, with the wall-clock budget marked. Middle: the same against updates. Right: test perplexity
(fairseq-eval-lm) at short and long memory for each run.

The example logs its loss divided by every position of its blocks, T per block, while it scores
T - 1 of them: its curves are converted to per scored token (ppl ** (T / (T - 1)),
benchmarks/equal_updates.py), and the plot says so.

Colour says which model and start (red: the example; purple: ours matched to it: its weights, zero
initial memory, its batches; blue: ours with its defaults), line style which budget (solid:
wall-clock, dashed: the example's number of updates); seeds other than 1 are paler.
"""
from typing import Dict, Tuple

from benchmarks.equal_updates import per_scored_token


def style(run: Dict) -> Tuple[str, str, float]:
    """(colour, line style, opacity) of a run of compare.measure_quality."""
    if run["impl"] == "example":
        color = "tab:red"
    else:
        color = "tab:purple" if run.get("matched") else "tab:blue"
    line = "-" if run["budget"] == "time" else "--"
    return color, line, 0.45 if run["seed"] != 1 else 1.0


def plot_quality(quality: Dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = quality["runs"]
    fig, (ax_time, ax_upd, ax_test) = plt.subplots(1, 3, figsize=(18, 5.2))
    for run in runs.values():
        color, line, alpha = style(run)
        curve = per_scored_token(run["curve"], run["impl"], quality["tokens_per_sample"])
        if not curve:
            continue
        for ax, x in ((ax_time, "wall"), (ax_upd, "update")):
            ax.plot([c[x] for c in curve], [c["ppl"] for c in curve], line, color=color, alpha=alpha,
                    label=run["name"])
    ax_time.axvline(quality["budget_minutes"] * 60, color="gray", linestyle=":", label="wall-clock budget")
    for ax, xlabel in ((ax_time, "wall-clock seconds"), (ax_upd, "updates")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training perplexity per scored token")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    tps = quality["tokens_per_sample"]
    note = (f"example's logged ppl raised to {tps}/{tps - 1}: it divides its loss by {tps} "
            f"positions per block and scores {tps - 1}")
    ax_time.set_title(f"training perplexity vs time\n({note})", fontsize=8)
    ax_upd.set_title(f"training perplexity vs updates\n({note})", fontsize=8)

    names = list(runs)
    width = 0.38
    for j, (mem, hatch) in enumerate((("short", ""), ("long", "//"))):
        xs = [i + (j - 0.5) * width for i in range(len(names))]
        values = [runs[n]["test"][mem]["ppl"] for n in names]
        bars = ax_test.bar(xs, values, width, color=[style(runs[n])[0] for n in names], hatch=hatch,
                           edgecolor="black", alpha=0.8, label=f"{mem} memory")
        for bar, v in zip(bars, values):
            ax_test.annotate(f"{v:.0f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom",
                             fontsize=7)
    ax_test.set_xticks(range(len(names)))
    ax_test.set_xticklabels([runs[n]["name"].replace(", ", ",\n") for n in names], fontsize=6)
    ax_test.set_ylabel("test perplexity (fairseq-eval-lm)")
    ax_test.set_title("WikiText-2 test perplexity")
    ax_test.legend(fontsize=8)
    fig.suptitle(f"Equal-budget training on CPU: same hyperparameters, {quality['budget_minutes']:g} min "
                 "wall-clock budget", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
