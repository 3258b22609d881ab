"""The steps every plot of the examples shares: the memory-length axis, labels, title, grid, save."""
import os


def finish_and_save(fig, ax, xlabel: str, title: str, out_png: str) -> str:
    """Label ``ax`` (y: perplexity), add the grid, write ``fig`` to ``out_png`` (120 dpi), close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def memory_length_axis(ax, mem_lens) -> None:
    """A symlog x axis of memory lengths with a tick at each of ``mem_lens`` (0, if there, at the
    left edge: a log axis could not show it)."""
    positive = [x for x in mem_lens if x > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1)
    ax.set_xticks(mem_lens)
    ax.set_xticklabels([str(x) for x in mem_lens])
    ax.minorticks_off()
