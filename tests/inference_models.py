"""Tiny Transformer-XL models and checkpoints with random weights for the tests (no training)."""
import os

import torch
from fairseq.data import Dictionary

from truncated_bptt.fairseq_checkpoint import build_model, save_checkpoint
from truncated_bptt.transformer_xl_model import TransformerXLConfig, TransformerXLDecoder

SMALL = dict(n_layer=2, d_model=16, n_head=2, d_head=8, d_inner=32, cutoffs=[10, 30], mem_len=16,
             tokens_per_sample=8)


def dictionary(n_symbols):
    """A fairseq dictionary of ``n_symbols`` entries: the 4 specials, then words."""
    d = Dictionary()
    for i in range(n_symbols - len(d)):
        d.add_symbol(f"w{i}")
    assert len(d) == n_symbols
    return d


def small_decoder(n_symbols=50, **overrides):
    """A seeded TransformerXLDecoder of the SMALL shape (any config field can be overridden)."""
    torch.manual_seed(0)
    cfg = TransformerXLConfig(**{**SMALL, **overrides})
    return TransformerXLDecoder(cfg, dictionary(n_symbols))


def tokens(bsz, length, n_symbols=50, seed=0):
    """Random token ids ``[bsz, length]`` (no specials)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, n_symbols, (bsz, length), generator=g)

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


def binarize(dict_dir, data_dir, split, lines):
    """``data_dir/{split}.bin/.idx`` (+ dict.txt) as fairseq-preprocess --only-source would write
    them, in-process (a CLI start costs seconds)."""
    from fairseq.data import indexed_dataset

    d = Dictionary.load(os.path.join(dict_dir, "dict.txt"))
    os.makedirs(data_dir, exist_ok=True)
    d.save(os.path.join(data_dir, "dict.txt"))
    prefix = os.path.join(data_dir, split)
    builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=len(d))
    for line in lines:
        builder.add_item(d.encode_line(line, add_if_not_exist=False).int())
    builder.finalize(prefix + ".idx")
    return data_dir


def tiny_model(data_dir, *extra, seed=0):
    """``(model, task, cfg)``: a random-weight tiny transformer_xl in eval mode."""
    torch.manual_seed(seed)
    return build_model(data_dir, TINY_ARGS + list(extra))


def tiny_checkpoint(data_dir, path, *extra, seed=0):
    model, task, cfg = tiny_model(data_dir, *extra, seed=seed)
    save_checkpoint(model, cfg, path)
    return model, task, cfg


def stream_segments(model, stream, seg, memory_key="test"):
    """Log-probs of the fairseq model streaming ``stream`` ``[B, L]`` (fairseq ids) in segments of
    ``seg`` tokens with its own memory: a list of ``[B, seg]`` tensors (the last may be shorter)."""
    out = []
    with torch.no_grad():
        for k, start in enumerate(range(0, stream.size(1) - 1, seg)):
            targets = stream[:, start + 1:start + seg + 1]
            tokens = stream[:, start:start + targets.size(1)]
            features, _ = model(tokens, memory_key=memory_key, segment_index=k)
            out.append(model.decoder.target_log_probs(features, targets))
    return out
