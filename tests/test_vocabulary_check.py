"""Weights trained with another dictionary are refused with one line naming both vocabulary sizes."""
import pytest
import torch
from fairseq.data import Dictionary

from truncated_bptt.transformer_xl_model import (TransformerXLConfig, TransformerXLDecoder,
                                                 TransformerXLLanguageModel)
from truncated_bptt.vocabulary_check import refuse_other_vocabulary_on_load


def model(n_words, div_val=2, cutoffs=(30, 60)):
    dictionary = Dictionary()
    for i in range(n_words):
        dictionary.add_symbol(f"w{i}")
    cfg = TransformerXLConfig(n_layer=1, d_model=16, n_head=2, d_head=8, d_inner=32, mem_len=4,
                              div_val=div_val, cutoffs=list(cutoffs))
    return TransformerXLLanguageModel(TransformerXLDecoder(cfg, dictionary)), len(dictionary)


@pytest.mark.parametrize("div_val, saved_words, words", [
    (1, 80, 81),   # one embedding table
    (2, 80, 90),   # adaptive input: three clusters on both sides
    (2, 40, 80),   # the checkpoint's vocabulary ends before the second cutoff: two clusters
])
def test_other_vocabulary_is_refused_with_both_sizes(div_val, saved_words, words):
    saved, saved_size = model(saved_words, div_val)
    target, size = model(words, div_val)
    refuse_other_vocabulary_on_load(target, size, "data-bin/other:data-bin/shard2")
    with pytest.raises(ValueError) as err:
        target.load_state_dict(saved.state_dict())
    assert str(err.value).startswith(
        f"the checkpoint's model has a vocabulary of {saved_size} types but "
        f"data-bin/other/dict.txt has {size}: use the data directory the model was trained on")


def test_same_vocabulary_loads():
    saved, _ = model(80)
    target, size = model(80)
    refuse_other_vocabulary_on_load(target, size, "data-bin")
    target.load_state_dict(saved.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(),
                                                  target.state_dict().values()))
