"""The equal-updates comparison of benchmarks/compare.py: its verdict and per-scored-token curves.

Matched runs: for each seed k, fairseq's example trains from its own fresh model (--seed k) and ours
from the same weights converted (benchmarks/initial_checkpoint.py), with HuggingFace's zero initial
memory (--zero-initial-memory) and the example's batches (--data-layout fairseq_example), for the
same number of updates; both are then scored by fairseq-eval-lm on the same targets. The two
implement the same mathematics, so what separates a pair is floating-point rounding, amplified by
training; what separates seeds is the initialisation.

Verdict (:func:`verdict`), on the pairs' test perplexities:

- "agree": every pair is within ``tolerance`` (ours / example - 1), and the example's own seeds
  spread by more than ``tolerance`` (so the tolerance can tell a different model from another seed);
- "disagree": some pair is further apart than ``tolerance``;
- "inconclusive": fewer than two seeds, or seeds that spread by no more than ``tolerance``.

Training curves: the example divides its summed loss by every position of a block, B x T, while it
scores B x (T - 1) targets (the last position's target is padding), so its logged loss is per
position, T / (T - 1) times too small per scored token. :func:`per_scored_token` undoes that.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

AGREE, DISAGREE, INCONCLUSIVE = "agree", "disagree", "inconclusive"


@dataclass(frozen=True)
class Pair:
    """Test perplexities of the matched runs of one seed."""
    seed: int
    example_ppl: float
    ours_ppl: float

    @property
    def relative_difference(self) -> float:
        return self.ours_ppl / self.example_ppl - 1.0


@dataclass(frozen=True)
class Verdict:
    status: str  # AGREE, DISAGREE or INCONCLUSIVE
    text: str  # one paragraph: the figures and the verdict, as the report prints it


def verdict(pairs: Sequence[Pair], tolerance: float) -> Verdict:
    """The verdict on matched pairs (see the module docstring)."""
    if not pairs:
        raise ValueError("no matched runs")
    pairs = sorted(pairs, key=lambda p: p.seed)
    diffs = ", ".join(f"seed {p.seed}: example {p.example_ppl:.2f}, ours {p.ours_ppl:.2f} "
                      f"({p.relative_difference:+.2%})" for p in pairs)
    worst = max(abs(p.relative_difference) for p in pairs)
    example = [p.example_ppl for p in pairs]
    spread = max(example) / min(example) - 1.0
    facts = (f"Matched runs (identical weights, HuggingFace's zero initial memory, the example's "
             f"batches), test ppl: {diffs}. Largest pair difference {worst:.2%}; the example's seeds "
             f"spread by {spread:.1%}; tolerance {tolerance:.1%}.")
    if worst > tolerance:
        return Verdict(DISAGREE, f"{facts} Verdict: the two DISAGREE (a pair differs by more than "
                                 "the tolerance).")
    if len(pairs) < 2:
        return Verdict(INCONCLUSIVE, f"{facts} Verdict: INCONCLUSIVE (one seed: run more with "
                                     "--matched-seeds).")
    if spread <= tolerance:
        return Verdict(INCONCLUSIVE, f"{facts} Verdict: INCONCLUSIVE (the seeds themselves spread by "
                                     "no more than the tolerance).")
    return Verdict(AGREE, f"{facts} Verdict: the two AGREE (every pair within the tolerance, which "
                          "is smaller than the seed-to-seed spread).")


def per_scored_token(curve: List[Dict], impl: str, tokens_per_sample: int) -> List[Dict]:
    """A training curve (records with "update", "ppl", ...) with ppl per scored token: the
    example's (``impl == "example"``) raised to T / (T - 1), ours as it is."""
    if impl != "example":
        return [dict(r) for r in curve]
    factor = tokens_per_sample / (tokens_per_sample - 1)
    return [dict(r, ppl=r["ppl"] ** factor) for r in curve]


def largest_curve_gap_bits(example_curve: List[Dict], ours_curve: List[Dict],
                           tokens_per_sample: int) -> Optional[float]:
    """The largest |log2 ppl(ours) - log2 ppl(example)| per scored token over the updates both
    training logs report (None when they share none)."""
    ex = {r["update"]: r["ppl"] for r in per_scored_token(example_curve, "example", tokens_per_sample)}
    gaps = [abs(math.log2(r["ppl"]) - math.log2(ex[r["update"]])) for r in ours_curve if r["update"] in ex]
    return max(gaps) if gaps else None
