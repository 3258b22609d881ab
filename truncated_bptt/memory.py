"""Transformer-XL memory: what a batch of streams carries from one segment to the next.

Every layer keeps its input at the last ``mem_len`` positions, detached (no gradient ever flows into
memory), in the model's dtype. Within an inference pass (no gradients; see
:mod:`truncated_bptt.inference_cache`) the memory also carries the keys and values the layers
computed from it, tagged with the pass that computed them, so the next segment does not recompute
them; outside that pass they are ignored.

:class:`XLMemory` is the one type for it: stream memory of training, validation and fairseq-eval-lm,
generation state, checkpoints (as a list of per-layer tensors) and the carried memory of
``--carry-memory`` all use it.
"""
from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional

import torch
from torch import Tensor


# The same_length masks (MemoryOptions.same_length_mask, relative_attention.attention_mask).
SAME_LENGTH_MASKS = ("authors", "nvidia")


@dataclass(frozen=True)
class MemoryOptions:
    """How much memory a model reads and how (changeable at evaluation, e.g. with fairseq's
    ``--model-overrides``; validated when the options are made, never per forward).

    mem_len: positions of every layer's input kept as memory (0: none).
    clamp_len: relative distances above it use the encoding of ``clamp_len`` (<= 0: no clamp).
    same_length: every query sees the same number of keys (see ``same_length_mask``).
    zero_initial_memory: streams start with ``mem_len`` zero vectors (HuggingFace's start) instead
        of empty memory.
    same_length_mask: which same_length mask: "authors" (the authors' and HuggingFace's code: each
        query sees its ``mem_len`` most recent keys, itself included) or "nvidia" (NVIDIA
        DeepLearningExamples' code: ``mem_len + 1``). Converted NVIDIA checkpoints use "nvidia".
    """
    mem_len: int = 0
    clamp_len: int = -1
    same_length: bool = False
    zero_initial_memory: bool = False
    same_length_mask: str = "authors"

    def __post_init__(self):
        if self.mem_len < 0:
            raise ValueError(f"mem_len must be >= 0, got {self.mem_len}")
        if self.same_length and self.mem_len <= 0:
            raise ValueError("same_length needs mem_len > 0 (each query sees mem_len keys); set --mem-len")
        if self.same_length_mask not in SAME_LENGTH_MASKS:
            raise ValueError(
                f"same_length_mask must be 'authors' or 'nvidia', got {self.same_length_mask!r}; "
                "e.g. --same-length-mask nvidia or --model-overrides \"{'same_length_mask': 'nvidia'}\""
            )

    @classmethod
    def from_config(cls, cfg) -> "MemoryOptions":
        """The options of a model config, checked for type (``--model-overrides`` can give any)."""
        values = {name: getattr(cfg, name, default)
                  for name, default in (("mem_len", 0), ("clamp_len", -1), ("same_length", False),
                                        ("zero_initial_memory", False))}
        for name, value in values.items():
            kind = bool if isinstance(cls.__dataclass_fields__[name].default, bool) else int
            if type(value) is not kind:
                raise ValueError(
                    f"{name} must be {'True or False' if kind is bool else 'an integer'}, got "
                    f"{value!r}; e.g. --model-overrides \"{{'{name}': "
                    f"{'True' if kind is bool else 640}}}\""
                )
        mask = getattr(cfg, "same_length_mask", "authors")  # absent from older checkpoints
        values["same_length_mask"] = mask.value if isinstance(mask, Enum) else mask  # ChoiceEnum
        return cls(**values)


@dataclass
class XLMemory:
    """The memory of ``B`` streams: ``M`` positions of every layer's input.

    hiddens: ``n_layer`` tensors ``[B, M, d_model]``.
    keys_values: ``n_layer`` tensors ``[B, M, 2, n_head, d_head]`` computed from ``hiddens`` in the
        inference pass numbered ``pass_serial``; None outside inference passes.
    storage: buffers that ``hiddens``/``keys_values`` are views of, with room after them
        (:class:`truncated_bptt.memory_buffers.MemoryBuffers`), or None.
    """
    hiddens: List[Tensor]
    keys_values: Optional[List[Tensor]] = None
    pass_serial: Optional[int] = None
    storage: Optional[object] = field(default=None, repr=False)

    @property
    def length(self) -> int:
        return self.hiddens[0].size(1)

    @property
    def batch_size(self) -> int:
        return self.hiddens[0].size(0)

    @classmethod
    def zeros(cls, n_layer: int, batch_size: int, length: int, d_model: int,
              like: Tensor) -> "XLMemory":
        """``length`` zero vectors per layer (HuggingFace's start of a stream)."""
        zeros = like.new_zeros(batch_size, length, d_model)
        return cls([zeros] * n_layer)

    def keys_values_of_pass(self, pass_serial: int) -> Optional[List[Tensor]]:
        """The cached keys/values if the inference pass ``pass_serial`` computed them, else None."""
        return self.keys_values if self.pass_serial == pass_serial else None

    def select_rows(self, index: Tensor) -> "XLMemory":
        """Row ``b`` of the result is row ``index[b]`` (beam search reordering); new tensors."""
        kv = None if self.keys_values is None else [t.index_select(0, index) for t in self.keys_values]
        return XLMemory([h.index_select(0, index) for h in self.hiddens], kv, self.pass_serial)

    def expand_rows(self, batch_size: int) -> "XLMemory":
        """A single stream's memory shared by ``batch_size`` rows (views, no copies)."""
        return XLMemory([h.expand(batch_size, -1, -1) for h in self.hiddens])

    def to(self, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> "XLMemory":
        """The hidden states on ``device`` in ``dtype`` (cached keys/values are dropped)."""
        return XLMemory([h.to(device=device, dtype=dtype) for h in self.hiddens])

    def to_checkpoint(self) -> List[Tensor]:
        """``n_layer`` CPU tensors ``[B, M, d_model]`` that share nothing with the live memory."""
        return [h.detach().cpu().clone() for h in self.hiddens]

    @classmethod
    def from_checkpoint(cls, tensors: List[Tensor], device: Optional[torch.device] = None) -> "XLMemory":
        return cls([t.detach().to(device) for t in tensors])


class ConcatenatingWriter:
    """Builds the memory after a segment by concatenation (training, and inference without a cache).

    For each layer, :meth:`layer_input` records the layer's input ``[B, T, d]`` and returns the
    layer's memory ``[B, M, d]`` (or None); :meth:`memory_after` keeps the last ``mem_len``
    positions of ``[memory; inputs]``, detached.
    """

    def __init__(self, memory: Optional[XLMemory]):
        self.memory = memory
        self.inputs: List[Tensor] = []

    def layer_input(self, layer: int, h: Tensor):
        """(memory ``[B, M, d]`` or None, None): this path computes keys/values in the layer."""
        self.inputs.append(h)
        return (None if self.memory is None else self.memory.hiddens[layer]), None

    @torch.no_grad()
    def memory_after(self, mem_len: int) -> Optional[XLMemory]:
        if mem_len == 0:
            return None
        hiddens = []
        for layer, h in enumerate(self.inputs):
            new = h[:, -mem_len:]
            if self.memory is not None:
                old = self.memory.hiddens[layer]
                keep = min(old.size(1), max(mem_len - h.size(1), 0))  # old positions that stay
                if keep > 0:
                    new = torch.cat([old[:, old.size(1) - keep:].to(h.dtype), new], dim=1)
            hiddens.append(new.detach().contiguous())
        return XLMemory(hiddens)
