"""``--compile``: the Transformer-XL layers through ``torch.compile`` (inductor), with eager fallback.

One compiled function serves every layer of every model in the process (the layers share their
code; their weights are inputs of the graph), and every dimension is dynamic, so the graphs stay
few whatever the memory length or segment length: one per combination of training / inference,
with or without memory, and a single query (generation) or several, whichever of those a run meets
(tests/test_compiled_layers.py checks the bound). Inductor needs a C++ compiler on CPU and triton on
CUDA; where compiling fails the layers run eagerly after one warning line saying why.
"""
import logging
from typing import Optional

import torch

from truncated_bptt.transformer_xl_layer import TransformerXLLayer

logger = logging.getLogger(__name__)


class CompiledLayers:
    """Calls a :class:`TransformerXLLayer` through one shared compiled function."""

    _compiled = None  # torch.compile(TransformerXLLayer.forward), made on first use

    def __init__(self):
        self.failure: Optional[str] = None  # why compiling failed, once it has
        self.compiled_calls = 0  # calls that ran the compiled graphs

    @classmethod
    def _function(cls):
        if cls._compiled is None:
            cls._compiled = torch.compile(TransformerXLLayer.forward, dynamic=True)
        return cls._compiled

    def __call__(self, layer: TransformerXLLayer, *args):
        if self.failure is None:
            try:
                out = self._function()(layer, *args)
                self.compiled_calls += 1
                return out
            except Exception as err:  # no C++ compiler / triton, an unsupported backend, ...
                self.failure = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
                logger.warning("--compile: torch.compile failed, running the layers eagerly (%s)",
                               self.failure)
        return layer(*args)
