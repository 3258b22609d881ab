"""Generation with ``truncated_bptt_lm``: fairseq-generate / fairseq-interactive over a Transformer-XL.

fairseq's SequenceGenerator feeds the decoder the growing prefix with an ``incremental_state``; the
Transformer-XL decoder then runs only the tokens it has not consumed yet over its cached memory, so
every prompt token and every new token costs one step (one query position) per layer. Sampling
(``--sampling --sampling-topk/--sampling-topp --temperature``) and beam search are fairseq's own.

Prompts are handled as fairseq's ``language_modeling`` task does: an input line becomes
``[eos] + tokens`` and the tokens are forced as a prefix (``eos`` is the "beginning" symbol the model
saw at every line start during training).

``--carry-memory`` (fairseq-interactive, one input per batch): each input is generated over the
memory left by the previous inputs and their outputs, i.e. over the stream
``eos prompt_1 output_1 eos prompt_2 output_2 ...`` exactly as training data is laid out. After an
input is done, the tokens of its best hypothesis are run once (in parallel, not step by step) over
the carried memory to produce the memory for the next input.
"""
import logging
from typing import List, Optional

import numpy as np
import torch
from fairseq.data import (
    AppendTokenDataset,
    IdDataset,
    NestedDictionaryDataset,
    NumelDataset,
    PadDataset,
    PrependTokenDataset,
    StripTokenDataset,
    TokenBlockDataset,
)
from fairseq.models import FairseqIncrementalDecoder, FairseqLanguageModel
from torch import Tensor

logger = logging.getLogger(__name__)

# Name of the decoder's incremental-state entry that holds its memory (TransformerXLDecoder).
MEMORY_STATE = "memory"


def build_prompt_dataset(dictionary, src_tokens, src_lengths):
    """fairseq-interactive inputs (each ending in eos) -> samples with ``src_tokens = [eos] + line``
    (right-padded) and a pad-terminated target, as fairseq's ``language_modeling`` task makes them."""
    lines = StripTokenDataset(
        TokenBlockDataset(src_tokens, src_lengths, block_size=None, pad=dictionary.pad(),
                          eos=dictionary.eos(), break_mode="eos"),
        dictionary.eos(),
    )
    source = PrependTokenDataset(lines, token=dictionary.eos())
    target = AppendTokenDataset(lines, token=dictionary.pad())
    return NestedDictionaryDataset(
        {
            "id": IdDataset(),
            "net_input": {
                "src_tokens": PadDataset(source, pad_idx=dictionary.pad(), left_pad=False),
                "src_lengths": NumelDataset(source, reduce=False),
            },
            "target": PadDataset(target, pad_idx=dictionary.pad(), left_pad=False),
        },
        sizes=[np.array(src_lengths)],
    )


def prompt_prefix(sample, bos: int) -> Optional[Tensor]:
    """The tokens to force: ``src_tokens`` without the leading beginning-of-line symbol."""
    prefix = sample["net_input"]["src_tokens"]
    if prefix.nelement() == 0:
        return None
    if prefix[:, 0].eq(bos).all():
        prefix = prefix[:, 1:]
    return prefix if prefix.size(1) > 0 else None


class CarriedMemory:
    """Memory carried across fairseq-interactive inputs: ``n_layer`` tensors ``[1, M, d_model]``."""

    def __init__(self):
        self.mems: Optional[List[Tensor]] = None

    def reset(self):
        self.mems = None

    @torch.no_grad()
    def advance(self, decoder, tokens: Tensor) -> None:
        """Run ``tokens`` ``[1, L]`` (what the model consumed for one input, incl. its leading eos)
        over the carried memory in one parallel pass and keep the new memory."""
        was_training = decoder.training
        decoder.eval()
        _, self.mems = decoder.extract_features(tokens, self.mems)
        decoder.train(was_training)


class MemorySeededDecoder(FairseqIncrementalDecoder):
    """Wraps a TransformerXLDecoder so that a generation starts over the carried memory instead of
    an empty one; everything else is the wrapped decoder's."""

    def __init__(self, decoder, carried: CarriedMemory):
        super().__init__(decoder.dictionary)
        self.inner = decoder
        self.carried = carried

    def forward(self, prev_output_tokens, encoder_out=None, incremental_state=None, **kwargs):
        mems = self.carried.mems
        if (incremental_state is not None and mems is not None
                and self.inner.get_incremental_state(incremental_state, MEMORY_STATE) is None):
            rows = prev_output_tokens.size(0)  # batch x beam
            seeded = {"consumed": torch.tensor(0)}
            for i, mem in enumerate(mems):
                seeded[f"layer_{i}"] = mem.to(prev_output_tokens.device).expand(rows, -1, -1)
            self.inner.set_incremental_state(incremental_state, MEMORY_STATE, seeded)
        return self.inner(prev_output_tokens, incremental_state=incremental_state)

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return self.inner.get_normalized_probs(net_output, log_probs, sample)

    def max_positions(self):
        return self.inner.max_positions()


class MemorySeededLanguageModel(FairseqLanguageModel):
    """What the SequenceGenerator sees instead of the model when ``--carry-memory`` is on."""

    def __init__(self, model, carried: CarriedMemory):
        super().__init__(MemorySeededDecoder(model.decoder, carried))
        self.wrapped = model

    def max_positions(self):
        return self.wrapped.max_positions()


def consumed_tokens(hypo_tokens: Tensor, eos: int) -> Tensor:
    """``[eos] + hypothesis`` without its final eos: the line as the stream holds it (the next input
    starts with its own eos)."""
    tokens = hypo_tokens
    if tokens.numel() > 0 and int(tokens[-1]) == eos:
        tokens = tokens[:-1]
    return torch.cat([tokens.new_full((1,), eos), tokens]).unsqueeze(0)


def check_carry_setup(models, sample) -> None:
    """One-line errors for --carry-memory setups that cannot carry a single stream's memory."""
    if len(models) != 1:
        raise ValueError("--carry-memory works with one model: pass a single checkpoint to --path")
    if sample["net_input"]["src_tokens"].size(0) != 1:
        raise ValueError(
            "--carry-memory needs one input per batch (inputs follow each other): use "
            "--batch-size 1 --buffer-size 1"
        )
    if getattr(models[0].decoder.cfg, "mem_len", 0) <= 0:
        raise ValueError(
            "--carry-memory needs memory: set --model-overrides \"{'mem_len': N}\" with N > 0"
        )
