"""--word-pieces: per-word figures of fairseq-eval-lm, against references computed by hand.

The batches come from the task's own eval-lm iterator over a binarized split, the scores from
fairseq's own ``eval_lm`` loop and ``SequenceScorer``, and the model is a fixed unigram
distribution whose probabilities are powers of two, so every total is a whole number of bits.
"""
import logging
import math

import pytest
import torch
from fairseq.data import Dictionary
from fairseq_cli.eval_lm import eval_lm  # fairseq-eval-lm's own scoring loop

from inference_models import binarize
from truncated_bptt.truncated_bptt_lm_task import TruncatedBPTTLMConfig, TruncatedBPTTLMTask

# Pieces of four lines, sentencepiece style: "the cat sat" / "Xs the" / "" / "at c" (the last one
# without sentencepiece's dummy prefix: its first piece still begins a word, after </s>).
SP_LINES = ["▁the ▁c at ▁sat", "▁ X s ▁the", "", "at ▁c"]
# Bits of each symbol under model A: p = 2 ** -bits (the other symbols share the rest).
BITS_A = {"▁the": 2, "at": 3, "s": 3, "▁": 3, "</s>": 3, "▁c": 4, "▁sat": 4, "X": 5}
# By hand: line 1 = 2+4+3+4+3, line 2 = 3+5+3+2+3, line 3 = 3, line 4 = 3+4+3.
TOTAL_BITS = 16 + 16 + 3 + 10
TOKENS = 5 + 5 + 1 + 3
WORDS = 4 + 3 + 1 + 3  # the cat sat </s> | Xs the </s> | </s> | at c </s>




class UnigramModel(torch.nn.Module):
    """Every position gets the same distribution ``p(symbol) = 2 ** -bits[symbol]``."""

    def __init__(self, dictionary, bits):
        super().__init__()
        probs = torch.zeros(len(dictionary), dtype=torch.float64)
        for symbol, b in bits.items():
            probs[dictionary.index(symbol)] = 2.0 ** -b
        rest = [i for i in range(len(dictionary)) if probs[i] == 0]
        probs[rest] = (1 - probs.sum()) / len(rest)
        self.register_buffer("log_probs", probs.log().float())

    def forward(self, src_tokens, **unused):
        return src_tokens.new_zeros(src_tokens.shape + (1,), dtype=torch.float), None

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        lp = self.log_probs.expand(net_output[0].shape[:2] + self.log_probs.shape)
        return lp if log_probs else lp.exp()


def make_task(tmp_path, lines, scheme, tokens_per_sample, segments_per_step=1):
    d = Dictionary()
    for symbol in sorted({s for line in lines for s in line.split()}):
        d.add_symbol(symbol)
    d.save(str(tmp_path / "dict.txt"))
    binarize(str(tmp_path), str(tmp_path / "data"), "test", lines)
    cfg = TruncatedBPTTLMConfig(data=str(tmp_path / "data"), tokens_per_sample=tokens_per_sample,
                                word_pieces=scheme, eval_segments_per_step=segments_per_step)
    task = TruncatedBPTTLMTask.setup_task(cfg)
    task.load_dataset("test")
    return task


def score(task, models, streams, softmax_batch=None, post_process=None):
    """fairseq's own eval-lm loop over the task's eval-lm batches; returns fairseq's result."""
    for model in models:
        task.word_scores.watch(model)
    batches = task.eval_lm_dataloader(task.dataset("test"), batch_size=streams)
    return eval_lm(models=models, source_dictionary=task.dictionary, batch_iterator=batches,
                   target_dictionary=task.dictionary, softmax_batch=softmax_batch,
                   post_process=post_process, device=torch.device("cpu"))


@pytest.mark.parametrize("streams,tokens_per_sample,softmax_batch,segments_per_step",
                         [(1, 64, None, 1), (1, 3, None, 1), (2, 3, None, 1), (2, 4, 3, 1),
                          (1, 3, None, 2), (2, 2, None, 16)])
def test_sentencepiece_words_by_hand(tmp_path, caplog, streams, tokens_per_sample, softmax_batch,
                                     segments_per_step):
    """Whatever the streams, segments (which cut words), segments per step and --softmax-batch
    chunks: 45 bits over 11 words, and fairseq's own per-token figure is the same 45 bits over 14
    tokens."""
    task = make_task(tmp_path, SP_LINES, "sentencepiece", tokens_per_sample, segments_per_step)
    with caplog.at_level(logging.INFO, logger="truncated_bptt.word_perplexity"):
        result = score(task, [UnigramModel(task.dictionary, BITS_A)], streams, softmax_batch)
    totals = task.word_scores.totals
    assert (totals.tokens, totals.words) == (TOKENS, WORDS)
    assert -totals.log_prob / math.log(2) == pytest.approx(TOTAL_BITS, abs=1e-4)
    assert totals.loss_base2() == pytest.approx(TOTAL_BITS / WORDS, abs=1e-6)
    assert result["loss"] == pytest.approx(TOTAL_BITS / TOKENS, abs=1e-6)  # fairseq's figure
    line = f"Word-level loss (base 2): {TOTAL_BITS / WORDS:.4f}, word-level perplexity: " \
           f"{2 ** (TOTAL_BITS / WORDS):.2f} (sentencepiece pieces merged: {WORDS} words"
    assert line in caplog.text


def test_ensemble_averages_probabilities_as_fairseq_does(tmp_path):
    bits_b = {"▁the": 1, "at": 2, "s": 4, "▁": 4, "</s>": 2, "▁c": 5, "▁sat": 5, "X": 4}
    task = make_task(tmp_path, SP_LINES, "sentencepiece", 4)
    result = score(task, [UnigramModel(task.dictionary, BITS_A),
                          UnigramModel(task.dictionary, bits_b)], streams=2)
    # Straightforward reference: every token of every line, then its </s>.
    pieces = [s for line in SP_LINES for s in line.split() + ["</s>"]]
    bits = sum(-math.log2((2.0 ** -BITS_A[s] + 2.0 ** -bits_b[s]) / 2) for s in pieces)
    assert task.word_scores.totals.words == WORDS
    assert task.word_scores.totals.loss_base2() == pytest.approx(bits / WORDS, rel=1e-5)
    assert result["loss"] == pytest.approx(bits / TOKENS, rel=1e-5)


def test_subword_nmt_words_counted_once_where_fairseq_counts_a_cut_word_twice(tmp_path):
    lines = ["the c@@ at sat", "X@@ s the", "", "at c"]
    bits = {"the": 2, "at": 3, "s": 3, "</s>": 3, "c@@": 4, "sat": 4, "X@@": 3, "c": 4}
    total = (2 + 4 + 3 + 4 + 3) + (3 + 3 + 2 + 3) + 3 + (3 + 4 + 3)
    # 3-token segments cut "X@@ | s": fairseq's --post-process "@@ " then counts "X@@" as a
    # word of its own (it merges only inside a segment); --word-pieces does not.
    task = make_task(tmp_path, lines, "subword_nmt", 3)
    fairseq_result = score(task, [UnigramModel(task.dictionary, bits)], streams=1,
                           post_process="@@ ")
    assert task.word_scores.totals.words == WORDS
    assert task.word_scores.totals.loss_base2() == pytest.approx(total / WORDS, abs=1e-6)
    assert fairseq_result["loss"] == pytest.approx(total / (WORDS + 1), abs=1e-6)
    # fairseq 0.12's --post-process subword_nmt looks for pieces ending in "subword_nmt" and so
    # merges nothing at all: its figure stays per token (13 tokens).
    task = make_task(tmp_path, lines, "subword_nmt", 3)
    fairseq_result = score(task, [UnigramModel(task.dictionary, bits)], streams=1,
                           post_process="subword_nmt")
    assert fairseq_result["loss"] == pytest.approx(total / 13, abs=1e-6)
    assert task.word_scores.totals.loss_base2() == pytest.approx(total / WORDS, abs=1e-6)


def test_scores_outside_eval_lm_are_not_counted(tmp_path):
    """A watched model scored outside fairseq-eval-lm's batches (e.g. fairseq-train) counts nothing."""
    task = make_task(tmp_path, SP_LINES, "sentencepiece", 4)
    model = UnigramModel(task.dictionary, BITS_A)
    task.word_scores.watch(model)
    target = torch.tensor([[4, 5]])
    model.get_normalized_probs(model(target), log_probs=True, sample={"target": target})
    assert task.word_scores.totals.tokens == 0


def test_word_pieces_on_data_without_pieces_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no symbol of the dictionary begins with ▁"):
        make_task(tmp_path, ["the cat sat"], "sentencepiece", 4)
    with pytest.raises(ValueError, match="no symbol of the dictionary ends with @@"):
        make_task(tmp_path, ["the cat sat"], "subword_nmt", 4)


def test_post_process_sentencepiece_points_to_word_pieces(tmp_path):
    task = make_task(tmp_path, SP_LINES, None, 4)
    task.cfg.post_process = "sentencepiece"
    with pytest.raises(ValueError, match="pass --word-pieces sentencepiece"):
        task.eval_lm_dataloader(task.dataset("test"), batch_size=1)
