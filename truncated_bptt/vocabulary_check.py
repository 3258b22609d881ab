"""Refuse, in one line, to load weights trained with another dictionary than the task's.

fairseq builds the model on the data directory's ``dict.txt`` and then copies the checkpoint's
weights in; with another dictionary (fairseq-eval-lm pointed at another data directory, or a corpus
binarized without ``--srcdict``) torch reports a size mismatch of some embedding or softmax
tensor. The vocabulary size is the number of rows of the model's token embeddings (for adaptive
input: summed over its clusters), so both sizes can be read off before any weight is copied.
"""
import os
import re
from typing import Dict

import torch
from torch import nn


def embedding_rows(embedding_names, state_dict: Dict[str, torch.Tensor], prefix="") -> int:
    """Total rows of the embedding tables in ``state_dict`` that sit where the model has its
    ``nn.Embedding`` modules (``embedding_names``). Tables in a ModuleList count by their list, so
    an adaptive input's clusters are all counted whatever their number in the checkpoint."""
    alternatives = set()
    for name in embedding_names:
        alternatives.add(re.escape(prefix + name) + r"\.weight")
        parent, _, last = name.rpartition(".")
        if parent and last.isdigit():  # an element of a ModuleList: count all its elements
            alternatives.add(re.escape(prefix + parent) + r"\.\d+\.weight")
    pattern = re.compile("|".join(sorted(alternatives)))
    return sum(t.shape[0] for k, t in state_dict.items() if pattern.fullmatch(k) and t.dim() == 2)


def refuse_other_vocabulary_on_load(model: nn.Module, dictionary_size: int, data: str):
    """Make ``model.load_state_dict`` raise a one-line ValueError when the weights were trained
    with a vocabulary of another size than ``dictionary_size``, the one ``model`` was built with
    (from the dictionary of ``data``, fairseq's DATA: directories joined by ':')."""
    dictionary_file = os.path.join(data.split(os.pathsep)[0], "dict.txt")
    embedding_names = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    if not embedding_names:
        return
    own_rows = embedding_rows(embedding_names, model.state_dict())

    def check(module, state_dict, prefix, *unused):
        saved = dictionary_size + embedding_rows(embedding_names, state_dict, prefix) - own_rows
        if saved == dictionary_size or saved <= 0:
            return  # same vocabulary, or no embeddings in this state dict
        raise ValueError(
            f"the checkpoint's model has a vocabulary of {saved:,} types but {dictionary_file} has "
            f"{dictionary_size:,}: use the data directory the model was trained on, or binarize "
            "the text with that directory's dictionary (fairseq-preprocess --only-source --srcdict "
            "TRAINING_DATA/dict.txt)"
        )

    model.register_load_state_dict_pre_hook(check)
