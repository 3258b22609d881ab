"""Generation with ``truncated_bptt_lm``: fairseq-generate / fairseq-interactive over a Transformer-XL.

fairseq's SequenceGenerator feeds the decoder the growing prefix with an ``incremental_state``; the
Transformer-XL decoder then runs only the tokens it has not consumed yet over its cached memory, so
every prompt token and every new token costs one step (one query position) per layer. Sampling
(``--sampling --sampling-topk/--sampling-topp --temperature``) and beam search are fairseq's own.

Prompts are handled as fairseq's ``language_modeling`` task does: an input line becomes
``[eos] + tokens`` and the tokens are forced as a prefix (``eos`` is the "beginning" symbol the model
saw at every line start during training).

The prompt tokens forced in every row are read in parallel at the first step, ``tokens_per_sample``
per forward (:class:`PromptPrimedDecoder`), not one generator step each. The task's
``build_generator`` / ``inference_step`` hand over to :class:`PromptSequenceGenerator`.

``--carry-memory`` (fairseq-interactive, one input per batch): each input is generated over the
memory left by the previous inputs and their outputs, i.e. over the stream
``eos prompt_1 output_1 eos prompt_2 output_2 ...`` exactly as training data is laid out. After an
input is done, the tokens of its best hypothesis are run once (in parallel, not step by step) over
the carried memory to produce the memory for the next input.
"""
from typing import Optional

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
from fairseq.sequence_generator import SequenceGenerator
from torch import Tensor

from truncated_bptt.memory import XLMemory

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
    """Memory carried across fairseq-interactive inputs (one stream)."""

    def __init__(self):
        self.memory: Optional[XLMemory] = None

    def reset(self):
        self.memory = None

    @torch.no_grad()
    def advance(self, decoder, tokens: Tensor) -> None:
        """Run ``tokens`` ``[1, L]`` (what the model consumed for one input, incl. its leading eos)
        over the carried memory in one parallel pass and keep the new memory."""
        was_training = decoder.training
        decoder.eval()
        _, self.memory = decoder.forward_segment(tokens, self.memory)
        decoder.train(was_training)


class PromptPrimedDecoder(FairseqIncrementalDecoder):
    """Wraps a TransformerXLDecoder for fairseq's SequenceGenerator.

    At the first step it (1) starts the memory from the carried one (``--carry-memory``) and
    (2) runs the prompt tokens that every row forces in parallel, ``chunk`` tokens per forward,
    instead of one generator step per token; the generator's steps inside the prompt then read the
    cached features. Later tokens cost one step each over the cached memory, as without the wrapper.
    With a prompt longer than ``mem_len`` the parallel pass lets its tokens see the whole chunk
    (as fairseq-eval-lm segments do), where token-by-token reading would see ``mem_len`` positions.
    """

    def __init__(self, decoder, carried: CarriedMemory, chunk: int):
        super().__init__(decoder.dictionary)
        self.inner = decoder
        self.carried = carried
        self.chunk = max(1, chunk)
        self.prompt: Optional[Tensor] = None  # [bsz, P] right-padded; set before each generation

    def forward(self, prev_output_tokens, encoder_out=None, incremental_state=None, **kwargs):
        if incremental_state is None:
            return self.inner(prev_output_tokens)
        step = prev_output_tokens.size(1) - 1
        if step == 0:
            if self.carried.memory is not None:
                memory = self.carried.memory.to(prev_output_tokens.device)
                self.inner.start_generation(incremental_state,
                                            memory.expand_rows(prev_output_tokens.size(0)))
            self._prime(prev_output_tokens, incremental_state)
        cache = self.get_incremental_state(incremental_state, "prompt")
        if cache is not None and step < cache["features"].size(1):
            return cache["features"][:, step:step + 1], {"attn": [None], "inner_states": None}
        return self.inner(prev_output_tokens, incremental_state=incremental_state)

    def _prime(self, tokens: Tensor, incremental_state) -> None:
        """Features ``[rows, n, d]`` of ``[bos, p_1 .. p_{n-1}]`` for the ``n`` prompt tokens all
        rows force; leaves the decoder's memory after them (it has consumed ``n`` tokens)."""
        if self.prompt is None:
            return
        prompt = self.prompt.to(tokens.device)
        prompt = prompt.repeat_interleave(tokens.size(0) // prompt.size(0), dim=0)  # beam copies
        n = int(prompt.ne(self.dictionary.pad()).sum(dim=1).min())
        if n <= 1:
            return  # a single position: the generator's own first step is the same work
        inputs = torch.cat([tokens[:, :1], prompt[:, : n - 1]], dim=1)
        ends = list(range(self.chunk, n, self.chunk)) + [n]
        features = [self.inner(inputs[:, :end], incremental_state=incremental_state)[0]
                    for end in ends]
        self.set_incremental_state(incremental_state, "prompt", {"features": torch.cat(features, 1)})

    def reorder_incremental_state(self, incremental_state, new_order: Tensor):
        cache = self.get_incremental_state(incremental_state, "prompt")
        if cache is not None:
            self.set_incremental_state(incremental_state, "prompt",
                                       {"features": cache["features"].index_select(0, new_order)})

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        return self.inner.get_normalized_probs(net_output, log_probs, sample)

    def max_positions(self):
        return self.inner.max_positions()


class PromptPrimedLanguageModel(FairseqLanguageModel):
    """What fairseq's SequenceGenerator sees instead of the model (see PromptPrimedDecoder)."""

    def __init__(self, model, carried: CarriedMemory, chunk: int):
        super().__init__(PromptPrimedDecoder(model.decoder, carried, chunk))
        self.wrapped = model

    def max_positions(self):
        return self.wrapped.max_positions()


class PromptSequenceGenerator(SequenceGenerator):
    """fairseq's SequenceGenerator (beam, --sampling, top-k/top-p, --temperature) over the models
    wrapped to read prompts in parallel and, with ``carry_memory``, to start each input from the
    memory left by the previous inputs and their outputs. It holds that carried memory: one
    generator is one fairseq-interactive session."""

    def __init__(self, models, tgt_dict, chunk: int = 1, carry_memory: bool = False, **kwargs):
        self.carried = CarriedMemory()
        self.carry_memory = carry_memory
        self.primed = [PromptPrimedLanguageModel(m, self.carried, chunk) for m in models]
        super().__init__(self.primed, tgt_dict, **kwargs)

    def generate_after_prompts(self, models, sample, prefix_tokens: Optional[Tensor], eos: int):
        """Hypotheses after each sample's prompt (``src_tokens`` without its leading eos, unless
        fairseq-generate's --prefix-size gives ``prefix_tokens``), starting from eos."""
        if self.carry_memory:
            check_carry_setup(models, sample)
        with torch.no_grad():
            if prefix_tokens is None:
                prefix_tokens = prompt_prefix(sample, eos)
            for model in self.primed:
                model.decoder.prompt = prefix_tokens
            hypos = self.generate(models, sample, prefix_tokens=prefix_tokens, bos_token=eos)
            if self.carry_memory:
                self.carried.advance(models[0].decoder, consumed_tokens(hypos[0][0]["tokens"], eos))
        return hypos


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
    if models[0].decoder.memory_options.mem_len <= 0:
        raise ValueError(
            "--carry-memory needs memory: set --model-overrides \"{'mem_len': N}\" with N > 0"
        )
