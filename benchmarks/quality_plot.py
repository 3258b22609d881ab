"""Plot of the equal-budget quality runs of benchmarks/compare.py (matplotlib, Agg backend: no display).

Left: training perplexity (fairseq's train_inner log) against wall-clock seconds, with the wall-clock
budget marked. Middle: the same against updates. Right: test perplexity (fairseq-eval-lm) at short and
long memory for each run.
"""
from typing import Dict

LABELS = {
    "example-time": "fairseq example (HF TransfoXL), time budget",
    "ours-updates": "ours, same updates as the example",
    "ours-time": "ours, same time budget",
}
STYLES = {"example-time": ("tab:red", "-"), "ours-updates": ("tab:blue", "--"), "ours-time": ("tab:blue", "-")}


def plot_quality(quality: Dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = quality["runs"]
    fig, (ax_time, ax_upd, ax_test) = plt.subplots(1, 3, figsize=(16, 4.8))
    for label, run in runs.items():
        color, style = STYLES[label]
        curve = run["curve"]
        if not curve:
            continue
        ax_time.plot([c["wall"] for c in curve], [c["ppl"] for c in curve], style, color=color, label=LABELS[label])
        ax_upd.plot([c["update"] for c in curve], [c["ppl"] for c in curve], style, color=color, label=LABELS[label])
    ax_time.axvline(quality["budget_minutes"] * 60, color="gray", linestyle=":", label="wall-clock budget")
    for ax, xlabel in ((ax_time, "wall-clock seconds"), (ax_upd, "updates")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training perplexity")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax_time.set_title("training perplexity vs time")
    ax_upd.set_title("training perplexity vs updates")

    names = list(runs)
    width = 0.38
    for j, (mem, hatch) in enumerate((("short", ""), ("long", "//"))):
        xs = [i + (j - 0.5) * width for i in range(len(names))]
        values = [runs[n]["test"][mem]["ppl"] for n in names]
        bars = ax_test.bar(xs, values, width, color=[STYLES[n][0] for n in names], hatch=hatch,
                           edgecolor="black", alpha=0.8, label=f"{mem} memory")
        for bar, v in zip(bars, values):
            ax_test.annotate(f"{v:.0f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom",
                             fontsize=8)
    ax_test.set_xticks(range(len(names)))
    ax_test.set_xticklabels([LABELS[n].replace(", ", ",\n", 1) for n in names], fontsize=7)
    ax_test.set_ylabel("test perplexity (fairseq-eval-lm)")
    ax_test.set_title("WikiText-2 test perplexity")
    ax_test.legend(fontsize=8)
    fig.suptitle(f"Equal-budget training on CPU: same hyperparameters, {quality['budget_minutes']:g} min "
                 "wall-clock budget", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
