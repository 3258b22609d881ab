"""adaptive_cross_entropy: the same loss and logs as fairseq's cross_entropy, computed target-indexed."""

import pytest
import torch
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.data import Dictionary

from truncated_bptt.adaptive_cross_entropy_criterion import AdaptiveCrossEntropyCriterion
from truncated_bptt.transformer_xl_model import (
    TransformerXLConfig,
    TransformerXLDecoder,
    TransformerXLLanguageModel,
)


class Task:
    def __init__(self, dictionary):
        self.target_dictionary = self.source_dictionary = dictionary


def setup(n_symbols=40):
    d = Dictionary()
    for i in range(n_symbols - len(d)):
        d.add_symbol(f"w{i}")
    torch.manual_seed(0)
    cfg = TransformerXLConfig(n_layer=1, d_model=16, n_head=2, d_head=8, d_inner=32, cutoffs=[10, 20],
                              mem_len=4, tokens_per_sample=6)
    model = TransformerXLLanguageModel(TransformerXLDecoder(cfg, d)).eval()
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, n_symbols, (2, 6), generator=g)
    target = torch.randint(4, n_symbols, (2, 6), generator=g)
    target[1, 4:] = d.pad()  # the end of a stream
    sample = {"id": torch.arange(2), "nsentences": 2, "ntokens": int(target.ne(d.pad()).sum()),
              "net_input": {"src_tokens": src, "src_lengths": torch.tensor([6, 6]),
                            "memory_key": "valid", "segment_index": 0},
              "target": target}
    return d, model, sample


def test_loss_and_logs_equal_fairseq_cross_entropy_on_full_log_probs():
    d, model, sample = setup()
    ours = AdaptiveCrossEntropyCriterion(Task(d), sentence_avg=False)
    loss, sample_size, log = ours(model, sample)
    # fairseq's cross_entropy sees the full [B, T, V] log-probabilities of the same features
    reference = CrossEntropyCriterion(Task(d), sentence_avg=False)
    features = model(**sample["net_input"])
    ref_loss, _ = reference.compute_loss(model, features, sample)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert sample_size == sample["ntokens"] == 10
    assert set(log) == {"loss", "ntokens", "nsentences", "sample_size"}
    unreduced, _ = ours.compute_loss(model, features, sample, reduce=False)
    assert unreduced.shape == (12,) and unreduced.view(2, 6)[1, 4:].abs().max() == 0.0
    _, sample_size, _ = AdaptiveCrossEntropyCriterion(Task(d), sentence_avg=True)(model, sample)
    assert sample_size == 2


def test_a_model_without_target_log_probs_gets_a_clear_error():
    d, model, sample = setup()

    class Plain(torch.nn.Module):
        decoder = torch.nn.Identity()

        def get_targets(self, sample, net_output):
            return sample["target"]

    with pytest.raises(ValueError, match="use --criterion cross_entropy"):
        AdaptiveCrossEntropyCriterion(Task(d), sentence_avg=False).compute_loss(
            Plain(), (torch.zeros(2, 6, 16),), sample)
