"""The finishing steps every plot of the examples shares: axis labels, title, grid, save."""
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
