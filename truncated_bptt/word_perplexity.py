"""Per-word loss and perplexity of a subword model in ``fairseq-eval-lm`` (``--word-pieces``).

fairseq-eval-lm reports loss and perplexity per token. For a subword vocabulary that figure depends
on the vocabulary; the figure that compares with word-level models is per *word*: the summed
log-probability of all pieces of the text divided by its number of words (every ``</s>``, i.e.
every line end, counting as one word, as in word-level results such as WikiText's). fairseq 0.12
only merges subword-nmt pieces (``--post-process subword_nmt``) and stops with "not implemented"
for sentencepiece; it also counts a word cut by a segment boundary twice.

With ``--word-pieces sentencepiece`` (or ``subword_nmt``) the task watches the scores fairseq's
own scorer computes (each model's ``get_normalized_probs``, gathered at the targets, ensembles
averaged as fairseq's ``SequenceScorer`` does) and counts the words among the scored targets:

* ``sentencepiece``: a piece starting with ``▁`` (U+2581) begins a word; so does ``</s>`` and the
  first piece of every line (the token after ``</s>``, in case the model was trained without
  sentencepiece's dummy prefix). ``<unk>`` never begins one: sentencepiece keeps the ``▁`` of an
  unknown word as a piece of its own.
* ``subword_nmt``: a piece not ending in ``@@`` ends a word (``</s>`` included).

A word is counted once however the segments cut it, so the totals are exact. The pieces' log
probabilities sum to the same total as fairseq's per-token figure; only the divisor changes. The
result is logged once the split has been scored, just before fairseq's own summary::

    Word-level loss (base 2): 6.1234, word-level perplexity: 70.12 (sentencepiece pieces merged:
    1,234 words incl. one </s> per line, over 5,678 scored tokens)
"""
import logging
import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

logger = logging.getLogger(__name__)

SCHEMES = ("sentencepiece", "subword_nmt")
SENTENCEPIECE_SPACE = "\u2581"  # "▁"
SUBWORD_NMT_CONTINUATION = "@@"


def scheme_name(value) -> Optional[str]:
    """The ``--word-pieces`` value as a plain string (config values may be Enums)."""
    value = getattr(value, "value", value)
    if value is None or value == "" or value == "none":
        return None
    if isinstance(value, str) and value.startswith("${"):  # a task config built on its own
        return None
    if value not in SCHEMES:
        raise ValueError(f"--word-pieces must be one of {', '.join(SCHEMES)} (got {value!r})")
    return value


def word_marks(dictionary, scheme: str) -> torch.Tensor:
    """Bool ``[V]``: for sentencepiece, which token ids begin a word; for subword_nmt, which end
    one. Raises a one-line ValueError when no symbol of the dictionary has the scheme's marker."""
    symbols = [dictionary[i] for i in range(len(dictionary))]
    if scheme == "sentencepiece":
        marks = [s.startswith(SENTENCEPIECE_SPACE) for s in symbols]
        marker = f"begins with {SENTENCEPIECE_SPACE} (U+2581)"
        word_pieces = any(marks)
    else:
        marks = [not s.endswith(SUBWORD_NMT_CONTINUATION) for s in symbols]
        marker = f"ends with {SUBWORD_NMT_CONTINUATION}"
        word_pieces = not all(marks)
    if not word_pieces:
        raise ValueError(
            f"--word-pieces {scheme}: no symbol of the dictionary {marker}, so the data is not "
            f"{scheme} pieces; drop --word-pieces for a word- or character-level model"
        )
    marks[dictionary.eos()] = True
    return torch.tensor(marks, dtype=torch.bool)


@dataclass
class WordLevelTotals:
    """What has been scored so far: summed natural-log probability, scored tokens and words."""

    log_prob: float = 0.0
    tokens: int = 0
    words: int = 0
    skipped_infinite: int = 0

    def loss_base2(self) -> float:
        """Bits per word."""
        return -self.log_prob / self.words / math.log(2) if self.words else 0.0


class WordLevelScores:
    """Accumulates per-word totals from what fairseq-eval-lm scores.

    :meth:`watch` each model the task builds, then iterate the eval-lm batches through
    :meth:`wrap`. Only batches passing through :meth:`wrap` are counted, so watching a model during
    fairseq-train does nothing.
    """

    def __init__(self, dictionary, scheme: str):
        self.scheme = scheme
        self.marks = word_marks(dictionary, scheme)
        self.eos = dictionary.eos()
        self.pad = dictionary.pad()
        self.totals = WordLevelTotals()
        self._num_models = 0
        self._sample: Optional[Dict] = None  # the batch being scored, as the task produced it
        self._chunks: Dict[int, List[torch.Tensor]] = {}  # model index -> gathered target scores
        self._is_log: Dict[int, bool] = {}
        self._reported = False

    # ---- what the model computes ---------------------------------------------------------------
    def watch(self, model) -> None:
        """Record the target scores of every ``model.get_normalized_probs`` call (the method
        fairseq's SequenceScorer calls, once per model, or once per ``--softmax-batch`` chunk)."""
        index, original = self._num_models, model.get_normalized_probs
        self._num_models += 1

        def get_normalized_probs(net_output, log_probs, sample=None):
            out = original(net_output, log_probs, sample=sample)
            if self._sample is not None and isinstance(sample, dict) and "target" in sample:
                target = sample["target"]
                scores = out.detach().gather(-1, target.unsqueeze(-1)).squeeze(-1)
                self._chunks.setdefault(index, []).append(scores.float().reshape(-1).cpu())
                self._is_log[index] = bool(log_probs)
            return out

        model.get_normalized_probs = get_normalized_probs

    # ---- the batches -----------------------------------------------------------------------------
    def wrap(self, iterator):
        """``iterator`` (fairseq-eval-lm's batches) with every batch's scores counted after it has
        been scored, and the result logged when it is exhausted."""
        return _CountingBatches(iterator, self)

    def begin_batch(self, sample) -> None:
        self._sample = sample if isinstance(sample, dict) and "net_input" in sample else None
        self._chunks, self._is_log = {}, {}

    def end_batch(self) -> None:
        sample, self._sample = self._sample, None
        if sample is None or not self._chunks:
            return
        target = sample["target"].cpu()
        scores = self._combine(target.shape)
        real = target.ne(self.pad)
        finite = torch.isfinite(scores)
        # fairseq-eval-lm leaves infinite scores out of its sum and count: so does this one.
        self.totals.skipped_infinite += int((real & ~finite).sum())
        kept = real & finite
        self.totals.log_prob += float(scores[kept].double().sum())
        self.totals.tokens += int(kept.sum())
        self.totals.words += int(self._word_count(sample, target, real))

    def _combine(self, shape) -> torch.Tensor:
        """Target log-probs ``[B, T]``: one model's, or the log of the models' mean probability."""
        per_model = []
        for index in sorted(self._chunks):
            values = torch.cat(self._chunks[index]).view(shape)
            per_model.append(values if self._is_log[index] else values.log())
        if len(per_model) == 1:
            return per_model[0]
        return torch.logsumexp(torch.stack(per_model), dim=0) - math.log(len(per_model))

    def _word_count(self, sample, target: torch.Tensor, real: torch.Tensor) -> int:
        counted = self.marks[target.long()]
        if self.scheme == "sentencepiece":
            # the token before each target is the input at its position (the streams' layout)
            previous = sample["net_input"]["src_tokens"].cpu()
            counted = counted | previous.eq(self.eos)
        return int((counted & real).sum())

    # ---- the result ------------------------------------------------------------------------------
    def report(self) -> None:
        if self._reported:
            return
        self._reported = True
        t = self.totals
        if t.skipped_infinite:
            logger.warning("word-level figures leave out %d tokens with infinite scores, as "
                           "fairseq-eval-lm does", t.skipped_infinite)
        if t.words == 0:
            logger.warning("word-level figures: no token was scored")
            return
        loss = t.loss_base2()
        logger.info(
            "Word-level loss (base 2): %.4f, word-level perplexity: %.2f (%s pieces merged: "
            "%s words incl. one </s> per line, over %s scored tokens)",
            loss, 2 ** loss, self.scheme, f"{t.words:,}", f"{t.tokens:,}",
        )


class _CountingBatches:
    """fairseq-eval-lm's batch iterator (length and position kept for its progress bar), telling
    :class:`WordLevelScores` where each batch begins and ends."""

    def __init__(self, iterator, scores: WordLevelScores):
        self._iterator = iterator
        self._scores = scores

    @property
    def n(self):
        return getattr(self._iterator, "n", 0)

    def __len__(self):
        return len(self._iterator)

    def __iter__(self):
        return self

    def __next__(self):
        # fairseq scores a batch between two requests: the previous one is complete now.
        self._scores.end_batch()
        try:
            sample = next(self._iterator)
        except StopIteration:
            self._scores.report()
            raise
        self._scores.begin_batch(sample)
        return sample


# ---- the task's hooks ---------------------------------------------------------------------------
def from_task_config(cfg, dictionary) -> Optional[WordLevelScores]:
    """The totals for ``--word-pieces``, or None when the option is not given."""
    scheme = scheme_name(getattr(cfg, "word_pieces", None))
    return WordLevelScores(dictionary, scheme) if scheme else None


def eval_lm_batches(cfg, scores: Optional[WordLevelScores], iterator):
    """fairseq-eval-lm's batches: counted when ``--word-pieces`` is given; a one-line error for
    ``--post-process sentencepiece``, which fairseq 0.12's eval-lm does not implement."""
    try:
        post_process = getattr(cfg, "post_process", None)
    except Exception:  # an interpolation without its root config (a task config built on its own)
        post_process = None
    if isinstance(post_process, str) and post_process in ("sentencepiece", "\u2581"):
        raise ValueError(
            "fairseq-eval-lm cannot merge sentencepiece pieces (--post-process sentencepiece is not "
            "implemented in fairseq 0.12): drop --post-process and pass --word-pieces sentencepiece, "
            "which reports loss and perplexity per word next to fairseq's per-token figures"
        )
    return scores.wrap(iterator) if scores is not None else iterator
