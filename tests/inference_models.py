"""Tiny Transformer-XL checkpoints with random weights for the inference tests (no training)."""
import os

import torch
from fairseq.data import Dictionary

from truncated_bptt.fairseq_checkpoint import build_model, save_checkpoint

N_WORDS = 40
TINY_ARGS = ["--n-layer", "2", "--d-model", "16", "--n-head", "2", "--d-head", "8", "--d-inner", "32",
             "--cutoffs", "20,30", "--tokens-per-sample", "8"]


def make_dictionary_dir(root, n_words=N_WORDS):
    """``root/dict.txt`` with words w0..w{n-1} (plus fairseq's 4 specials first)."""
    d = Dictionary()
    for i in range(n_words):
        d.add_symbol(f"w{i}", n=1000 - i)
    os.makedirs(root, exist_ok=True)
    d.save(os.path.join(root, "dict.txt"))
    return root


def tiny_model(data_dir, *extra, seed=0):
    """``(model, task, cfg)``: a random-weight tiny transformer_xl in eval mode."""
    torch.manual_seed(seed)
    return build_model(data_dir, TINY_ARGS + list(extra))


def tiny_checkpoint(data_dir, path, *extra, seed=0):
    model, task, cfg = tiny_model(data_dir, *extra, seed=seed)
    save_checkpoint(model, cfg, path)
    return model, task, cfg
