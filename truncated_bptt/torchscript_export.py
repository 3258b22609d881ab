"""Self-contained TorchScript scorer for a trained ``transformer_xl`` (the NVIDIA-style inference path).

:func:`export_scorer` builds a :class:`TransformerXLScorer` from a decoder and saves it with
``torch.jit.save``; the artefact loads with ``torch.jit.load`` alone: no fairseq, no plugin.

The scorer is not a second implementation: it scripts the model's own layers (copies of its
:class:`~truncated_bptt.transformer_xl_layer.TransformerXLLayer` modules) and calls the same
functions as the eager model for the adaptive input (:func:`adaptive_embedding`), the mask and
position encodings (:mod:`truncated_bptt.relative_attention`) and the adaptive softmax
(:func:`adaptive_target_log_probs`, :func:`adaptive_log_probs`). Only the plumbing around them
differs: the memory is a plain list of per-layer tensors, grown by concatenation, as NVIDIA's.

Why ``torch.jit.script`` and not ``torch.export``: scoring a stream needs a memory whose length
changes (empty at the first segment, then up to ``mem_len``), any segment length (1 for streaming
token by token), and the adaptive softmax computes each tail cluster only for the rows whose target
falls in it (data-dependent shapes, which is what keeps scoring free of ``B x T x V`` logits).
Scripting keeps this control flow as it is. ``torch.jit.script`` is deprecated in torch 2.13 but
fully functional, and it is the format NVIDIA's Transformer-XL ships.

Usage of the artefact (tensors batch-first)::

    scorer = torch.jit.load("model.ts")
    mems = []                                     # empty memory at the start of a stream
    for tokens, targets in segments:              # LongTensor [B, T] each
        log_probs, mems = scorer(tokens, targets, mems)   # fp32 [B, T], n_layer x [B, M, d]
    scorer.symbols                                # the dictionary (index -> symbol)
"""
import copy
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from truncated_bptt.adaptive_input import adaptive_embedding
from truncated_bptt.projected_adaptive_softmax import adaptive_log_probs, adaptive_target_log_probs
from truncated_bptt.relative_attention import AttentionContext, attention_mask, position_encodings


class OptionalTensor(nn.Module):
    """A weight that may be absent (a projection, the head's tail rows): a buffer and a flag, so
    that ``.to(dtype)`` converts it and TorchScript sees a plain ``Optional[Tensor]``."""

    def __init__(self, value: Optional[Tensor]):
        super().__init__()
        self.present = value is not None
        self.register_buffer("value", value.detach().clone() if value is not None else torch.empty(0))

    def get(self) -> Optional[Tensor]:
        return self.value if self.present else None


class SoftmaxCluster(nn.Module):
    """(weight, bias, projection or None) of one adaptive-softmax cluster, as buffers."""

    def __init__(self, weight: Tensor, bias: Tensor, projection: Optional[Tensor]):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.projection = OptionalTensor(projection)

    def params(self) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        return self.weight, self.bias, self.projection.get()


class TransformerXLScorer(nn.Module):
    """Scores token streams segment by segment with memory; see the module docstring."""

    symbols: List[str]
    embed_bounds: List[int]
    softmax_bounds: List[int]

    def __init__(self, decoder, symbols: List[str]):
        super().__init__()
        cfg, opts = decoder.cfg, decoder.memory_options
        self.d_model = cfg.d_model
        self.mem_len, self.clamp_len, self.same_length = opts.mem_len, opts.clamp_len, opts.same_length
        self.same_length_mask = opts.same_length_mask
        self.symbols = list(symbols)
        self.pad, self.eos = decoder.dictionary.pad(), decoder.dictionary.eos()
        embed, softmax = decoder.embed, decoder.softmax
        self.emb_scale = float(embed.emb_scale)
        self.embed_bounds = list(embed.bounds)
        self.embed_tables = nn.ModuleList(OptionalTensor(layer.weight) for layer in embed.emb_layers)
        projections = list(embed.emb_projs) if len(embed.emb_projs) > 0 else [None]
        self.embed_projections = nn.ModuleList(OptionalTensor(p) for p in projections)
        self.layers = copy.deepcopy(decoder.layers).eval()
        for param in self.layers.parameters():
            param.requires_grad_(False)
        self.r_w_bias = OptionalTensor(decoder.r_w_bias)
        self.r_r_bias = OptionalTensor(decoder.r_r_bias)
        self.softmax_bounds = list(softmax.bounds)
        self.softmax_clusters = nn.ModuleList(SoftmaxCluster(*p) for p in softmax.cluster_params())
        tail_weight, tail_bias = softmax.tail_rows()
        self.tail_weight, self.tail_bias = OptionalTensor(tail_weight), OptionalTensor(tail_bias)

    def embed(self, tokens: Tensor) -> Tensor:
        """``[B, T]`` -> ``[B, T, d_model]`` (adaptive input, scaled by ``sqrt(d_model)``)."""
        tables: List[Tensor] = []
        for table in self.embed_tables:
            value = table.get()
            assert value is not None
            tables.append(value)
        projections: List[Optional[Tensor]] = []
        for projection in self.embed_projections:
            projections.append(projection.get())
        return adaptive_embedding(tokens, tables, projections, self.embed_bounds, self.d_model,
                                  self.emb_scale)

    def clusters(self) -> List[Tuple[Tensor, Tensor, Optional[Tensor]]]:
        out: List[Tuple[Tensor, Tensor, Optional[Tensor]]] = []
        for cluster in self.softmax_clusters:
            out.append(cluster.params())
        return out

    @torch.jit.export
    def features(self, tokens: Tensor, mems: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """tokens ``[B, T]``, mems ``n_layer x [B, M, d]`` (``[]`` = none) -> features
        ``[B, T, d]`` and the new memory (last ``mem_len`` inputs of each layer; ``[]`` if 0)."""
        h = self.embed(tokens)
        qlen = tokens.size(1)
        mlen = mems[0].size(1) if len(mems) > 0 else 0
        mask = attention_mask(qlen, mlen, self.same_length, self.mem_len, h.device,
                              self.same_length_mask)
        encodings = position_encodings(mlen + qlen, self.d_model, self.clamp_len, h.device, h.dtype,
                                       distinct=True)
        context = AttentionContext(encodings, mask, self.r_w_bias.get(), self.r_r_bias.get(), None)
        new_mems: List[Tensor] = []
        for i, layer in enumerate(self.layers):
            mem: Optional[Tensor] = None
            if len(mems) > 0:
                mem = mems[i].to(h.dtype)
            if self.mem_len > 0:
                cat = torch.cat([mem, h], dim=1) if mem is not None else h
                new_mems.append(cat[:, max(0, cat.size(1) - self.mem_len):].contiguous())
            h = layer(h, context, mem, None, None)
        return h, new_mems

    @torch.jit.export
    def target_log_probs(self, features: Tensor, targets: Tensor) -> Tensor:
        """features ``[B, T, d]``, targets ``[B, T]`` -> fp32 ``[B, T]`` log p(target)."""
        flat = adaptive_target_log_probs(
            features.reshape(-1, features.size(-1)), targets.reshape(-1), self.clusters(),
            self.tail_weight.get(), self.tail_bias.get(), self.softmax_bounds,
        )
        return flat.view(targets.shape)

    @torch.jit.export
    def next_token_log_probs(self, features: Tensor) -> Tensor:
        """features ``[N, d]`` -> fp32 ``[N, V]`` full log-probabilities (for a few rows only)."""
        return adaptive_log_probs(features, self.clusters(), self.tail_weight.get(),
                                  self.tail_bias.get(), self.softmax_bounds)

    def forward(self, tokens: Tensor, targets: Tensor, mems: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """Score one segment: tokens/targets ``[B, T]`` (targets = next tokens), mems as
        :meth:`features` -> (fp32 log p(targets) ``[B, T]``, new memory)."""
        features, new_mems = self.features(tokens, mems)
        return self.target_log_probs(features, targets), new_mems


def export_scorer(model, path: str, dtype: torch.dtype = torch.float32) -> torch.jit.ScriptModule:
    """Script a scorer of ``model`` (a TransformerXLLanguageModel, with its current memory options),
    cast it to ``dtype`` and save it to ``path``."""
    decoder = model.decoder
    scorer = TransformerXLScorer(decoder, list(decoder.dictionary.symbols)).to(dtype).eval()
    scripted = torch.jit.script(scorer)
    torch.jit.save(scripted, path)
    return scripted
