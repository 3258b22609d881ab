"""Hydra overrides that keep a recipe's sequences per update on another number of GPUs.

    python examples/wikitext103/batch_overrides.py wt103_base 1              # -> update_freq
    python examples/wikitext103/batch_overrides.py wt103_base 1 --mode streams

A recipe's batch is global: sequences per update = dataset.batch_size (streams per GPU) x GPUs x
optimization.update_freq. Two ways to keep it on G GPUs:

* ``accumulate`` (default): keep the recipe's streams per GPU and set update_freq = designed GPUs /
  G. Same GPU memory per step; each update then advances each of k x fewer streams by k
  consecutive segments (truncated BPTT's gradient accumulation), so the batch holds the same number
  of tokens but fewer, longer pieces of text: close to the recipe, not identical.
* ``streams``: batch_size = global / G, update_freq 1: exactly the recipe's streams, k x more GPU
  memory per step (model.checkpoint_activations=true helps).
"""
import argparse
import os
import sys

from omegaconf import OmegaConf

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "configs")
# GPUs each recipe's dataset.batch_size is written for (see the recipes' headers).
DESIGNED_GPUS = {"wt103_base": 8, "wt103_large": 8, "wt103_large_multinode": 32, "paper_base": 4,
                 "tiny_cpu": 1}


def batch_overrides(recipe: str, gpus: int, mode: str = "accumulate"):
    if recipe not in DESIGNED_GPUS:
        raise ValueError(f"unknown recipe {recipe!r}: one of {', '.join(sorted(DESIGNED_GPUS))}")
    if gpus < 1:
        raise ValueError(f"need at least one GPU, got {gpus}")
    cfg = OmegaConf.load(os.path.join(CONFIGS, f"{recipe}.yaml"))
    per_gpu, designed = int(cfg.dataset.batch_size), DESIGNED_GPUS[recipe]
    total = per_gpu * designed * int(cfg.optimization.update_freq[0])
    if mode == "streams" or gpus > designed:
        if total % gpus:
            raise ValueError(f"{recipe}: {total} sequences per update do not split evenly over "
                             f"{gpus} GPUs; choose a GPU count dividing {total}")
        return [f"dataset.batch_size={total // gpus}", "optimization.update_freq=[1]"]
    if mode != "accumulate":
        raise ValueError(f"--mode must be accumulate or streams, got {mode!r}")
    if total % (per_gpu * gpus):
        raise ValueError(f"{recipe}: {total} sequences per update are not a multiple of "
                         f"{per_gpu} streams x {gpus} GPUs; use --mode streams or another GPU count")
    return [f"dataset.batch_size={per_gpu}", f"optimization.update_freq=[{total // (per_gpu * gpus)}]"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("gpus", type=int)
    parser.add_argument("--mode", default="accumulate", choices=["accumulate", "streams"])
    args = parser.parse_args(argv)
    try:
        print(" ".join(batch_overrides(args.recipe, args.gpus, args.mode)))
    except ValueError as e:
        sys.exit(f"batch_overrides: {e}")


if __name__ == "__main__":
    main()
