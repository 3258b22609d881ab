"""``adaptive_cross_entropy``: fairseq's cross-entropy, computed target-indexed by the model.

Same maths and logging as fairseq's ``cross_entropy`` (loss and nll_loss in base 2, perplexity
derived), but the log-probabilities come from ``model.decoder.target_log_probs(features, target)``,
which evaluates the projected adaptive softmax only where the targets are: no ``B x T x V`` logits.
"""
from dataclasses import dataclass

from fairseq.criterions import register_criterion
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.dataclass import FairseqDataclass
from omegaconf import II

from truncated_bptt.tied_table import output_weights_of


@dataclass
class AdaptiveCrossEntropyConfig(FairseqDataclass):
    sentence_avg: bool = II("optimization.sentence_avg")


@register_criterion("adaptive_cross_entropy", dataclass=AdaptiveCrossEntropyConfig)
class AdaptiveCrossEntropyCriterion(CrossEntropyCriterion):
    """Negative log-likelihood summed over non-padding targets; reduce_metrics as ``cross_entropy``."""

    def compute_loss(self, model, net_output, sample, reduce=True):
        decoder = getattr(model, "decoder", None)
        if not hasattr(decoder, "target_log_probs"):
            raise ValueError(
                f"criterion adaptive_cross_entropy needs a model whose decoder has target_log_probs "
                f"(e.g. --arch transformer_xl), got {type(model).__name__}; use --criterion cross_entropy"
            )
        target = model.get_targets(sample, net_output)
        # fp32 [B, T]; with the softmax weights this forward returned (tied_table.py), if any
        lp = decoder.target_log_probs(net_output[0], target, output_weights_of(net_output))
        nll = -lp.masked_fill(target.eq(self.padding_idx), 0.0)
        loss = nll.sum() if reduce else nll.view(-1)
        return loss, loss
