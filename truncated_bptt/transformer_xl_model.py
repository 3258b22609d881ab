"""Transformer-XL language model (Dai et al. 2019) for fairseq: ``--arch transformer_xl`` and presets.

Our own implementation of the authors' / NVIDIA's formulation (no HuggingFace dependency), with the
option names and defaults of fairseq's ``examples/truncated_bptt`` so its command lines run unchanged.

Memory ("recurrence", :mod:`truncated_bptt.memory`): every layer keeps its inputs of the last
``mem_len`` positions, detached, in the model's dtype, batch-first ``[B, M, d_model]``. The decoder
keeps one memory per stream set (``memory_key``: "train", "valid", ...) for streaming training and
evaluation; a generation keeps its memory in the ``incremental_state`` fairseq's SequenceGenerator
passes. Inference passes reuse what they computed once (:mod:`truncated_bptt.inference_cache`).
"""
import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import (
    FairseqIncrementalDecoder,
    FairseqLanguageModel,
    register_model,
    register_model_architecture,
)
from omegaconf import II
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from truncated_bptt.adaptive_input import AdaptiveInput
from truncated_bptt.compiled_layers import CompiledLayers
from truncated_bptt.inference_cache import GrowingWriter, InferenceCache
from truncated_bptt.memory import ConcatenatingWriter, MemoryOptions, XLMemory
from truncated_bptt.packed_weights import PackedSoftmax, can_pack, packs_tails
from truncated_bptt.projected_adaptive_softmax import ProjectedAdaptiveSoftmax
from truncated_bptt.relative_attention import AttentionContext, attention_mask, position_encodings
from truncated_bptt.segment_block import SegmentAttention, plan_segments
from truncated_bptt.tied_table import TiedOutputWeights, gather_and_split, output_weights_of
from truncated_bptt.transformer_xl_layer import TransformerXLLayer

logger = logging.getLogger(__name__)

# Transformer-XL has no absolute positions, hence no length limit of its own.
UNLIMITED_POSITIONS = 1_000_000


@dataclass
class TransformerXLConfig(FairseqDataclass):
    # Defaults follow fairseq's examples/truncated_bptt (which took them from the original code).
    n_layer: int = field(default=12, metadata={"help": "number of decoder layers"})
    d_model: int = field(default=500, metadata={"help": "model (hidden state) dimension"})
    n_head: int = field(default=10, metadata={"help": "number of attention heads"})
    d_head: int = field(default=50, metadata={"help": "dimension of each attention head"})
    d_inner: int = field(default=1000, metadata={"help": "feed-forward inner dimension"})
    d_embed: int = field(
        default=-1, metadata={"help": "adaptive input/softmax head width; -1 means d_model"}
    )
    div_val: int = field(
        default=1, metadata={"help": "cluster i of the adaptive input/softmax has width d_embed // div_val**i"}
    )
    cutoffs: List[int] = field(
        default_factory=lambda: [20000, 40000, 200000],
        metadata={"help": "adaptive input/softmax cluster boundaries (token ids, fairseq "
                          "dictionary order incl. the 4 specials); those >= the vocabulary are dropped"},
    )
    mem_len: int = field(
        default=0, metadata={"help": "positions of each layer's input kept as memory (0: none); "
                                     "changeable at evaluation with --model-overrides"}
    )
    clamp_len: int = field(
        default=-1, metadata={"help": "relative distances above this use the encoding of clamp_len "
                                      "(<= 0: no clamp)"}
    )
    same_length: bool = field(
        default=False, metadata={"help": "every query sees the same number of keys (mem_len, or "
                                         "mem_len + 1 with --same-length-mask nvidia)"}
    )
    same_length_mask: ChoiceEnum(["authors", "nvidia"]) = field(
        default="authors", metadata={"help": "the same_length mask: authors (the authors' and "
                                             "HuggingFace's code: a query sees its mem_len most "
                                             "recent keys, itself included) or nvidia (NVIDIA "
                                             "DeepLearningExamples' code: mem_len + 1 keys; set by "
                                             "truncated-bptt-convert nvidia)"}
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout probability"})
    dropatt: float = field(default=0.0, metadata={"help": "dropout on attention probabilities"})
    pre_lnorm: bool = field(default=False, metadata={"help": "LayerNorm before each sublayer"})
    tie_r: bool = field(
        default=False, metadata={"help": "one u/v (r_w_bias, r_r_bias) shared by all layers, as the "
                                         "authors and NVIDIA; default: per layer, as fairseq's example"}
    )
    untie_weight: bool = field(
        default=False, metadata={"help": "do not tie the adaptive softmax weights to the input embeddings"}
    )
    untie_projs: bool = field(
        default=False, metadata={"help": "do not tie the tail clusters' output projections to the input ones"}
    )
    init_std: float = field(default=0.02, metadata={"help": "std of the normal weight init"})
    proj_init_std: float = field(default=0.01, metadata={"help": "std of the projections' init"})
    checkpoint_activations: bool = field(
        default=False, metadata={"help": "recompute each layer's activations in the backward pass"}
    )
    offload_activations: bool = field(
        default=False, metadata={"help": "checkpoint activations and keep the saved ones on CPU"}
    )
    attention: ChoiceEnum(["auto", "reference", "sdpa"]) = field(
        default="auto", metadata={"help": "attention kernel: reference (matmuls + softmax), sdpa "
                                          "(torch's fused scaled_dot_product_attention with the "
                                          "position term as its bias), auto (sdpa on CUDA, "
                                          "reference on CPU); all give the same results"}
    )
    compile: bool = field(
        default=False, metadata={"help": "run the layers through torch.compile (inductor: a C++ "
                                         "compiler on CPU, triton on CUDA); where compiling fails, "
                                         "one warning and eager execution"}
    )
    zero_initial_memory: bool = field(
        default=False, metadata={"help": "start every stream with mem_len zero vectors of memory, as "
                                         "HuggingFace's TransfoXL (and so fairseq's example) does; "
                                         "default: empty memory, as the authors and NVIDIA"}
    )
    tokens_per_sample: int = II("task.tokens_per_sample")


def clip_cutoffs(cutoffs: List[int], n_token: int) -> List[int]:
    """Drop cutoffs that do not fall inside the vocabulary, as fairseq's example does."""
    return [c for c in cutoffs if c < n_token]


def validate_config(cfg, n_token: int) -> MemoryOptions:
    """Raise a one-line ValueError naming the bad option and the fix; return the memory options."""
    for name in ("n_layer", "d_model", "n_head", "d_head", "d_inner"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if cfg.div_val < 1:
        raise ValueError(f"--div-val must be >= 1, got {cfg.div_val}")
    cutoffs = list(cfg.cutoffs)
    if any(c <= 0 for c in cutoffs) or any(b <= a for a, b in zip(cutoffs, cutoffs[1:])):
        raise ValueError(f"--cutoffs must be positive and strictly increasing, got {cutoffs}")
    d_embed = cfg.d_embed if cfg.d_embed > 0 else cfg.d_model
    n_clusters = len(clip_cutoffs(cutoffs, n_token))
    if d_embed // cfg.div_val ** n_clusters < 1:
        raise ValueError(
            f"--div-val {cfg.div_val} leaves the last of {n_clusters + 1} clusters no dimensions "
            f"(d_embed {d_embed}); use a smaller --div-val or fewer --cutoffs"
        )
    for name in ("dropout", "dropatt"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise ValueError(f"--{name} must be in [0, 1), got {getattr(cfg, name)}")
    return MemoryOptions.from_config(cfg)


_NOT_GIVEN = object()


@register_model("transformer_xl", dataclass=TransformerXLConfig)
class TransformerXLLanguageModel(FairseqLanguageModel):
    @classmethod
    def build_model(cls, cfg: TransformerXLConfig, task):
        return cls(TransformerXLDecoder(cfg, task.target_dictionary))

    def forward(self, src_tokens, src_lengths=None, incremental_state=None, memory_key=_NOT_GIVEN,
                segment_index=None, segment_length=None, **kwargs):
        """fairseq's entry point. Batches of ``truncated_bptt_lm`` carry ``memory_key`` (which
        streams' memory to use), ``segment_index`` and ``segment_length`` (fairseq-eval-lm's steps
        hold several segments); ``memory_key=None`` runs one stateless segment.

        A batch without ``memory_key`` comes from another task (e.g. fairseq-eval-lm's default
        ``language_modeling``), which would score every segment without memory and report a
        silently wrong perplexity: refused.
        """
        if memory_key is _NOT_GIVEN:
            if incremental_state is None:
                raise ValueError(
                    "transformer_xl got a batch without memory_key: only --task truncated_bptt_lm "
                    "feeds the model its streams in order with memory; add --task truncated_bptt_lm "
                    "(or pass memory_key=None for one stateless segment)"
                )
            memory_key = None
        return self.decoder(src_tokens, src_lengths=src_lengths, incremental_state=incremental_state,
                            memory_key=memory_key, segment_index=segment_index,
                            segment_length=segment_length)

    def max_positions(self):
        return UNLIMITED_POSITIONS


def _choice(value) -> str:
    """A ChoiceEnum config value as its string (omegaconf may hand over the enum member)."""
    return str(getattr(value, "value", value))


def _eager(layer, *args):
    return layer(*args)


@dataclass
class GenerationState:
    """What one generation (fairseq's ``incremental_state``) keeps: the memory after the tokens
    consumed so far, their number, and the pass's inference cache."""
    memory: Optional[XLMemory] = None
    consumed: int = 0
    cache: Optional[InferenceCache] = None


class TransformerXLDecoder(FairseqIncrementalDecoder):
    """Adaptive input -> ``n_layer`` relative-attention layers over memory -> projected adaptive softmax.

    The network is :meth:`forward_segment`. Around it, fairseq's entry point :meth:`forward` keeps
    the memory of each set of streams (``memory_key``: "train", "valid", ...) and of each generation
    (``incremental_state``), and the inference caches (:mod:`truncated_bptt.inference_cache`).
    """

    def __init__(self, cfg, dictionary):
        super().__init__(dictionary)
        n_token = len(dictionary)
        self.memory_options = validate_config(cfg, n_token)
        self.cfg = cfg
        self.padding_idx = dictionary.pad()
        d_model = cfg.d_model
        d_embed = cfg.d_embed if cfg.d_embed > 0 else d_model
        cutoffs = clip_cutoffs(list(cfg.cutoffs), n_token)
        self.embed = AdaptiveInput(n_token, d_embed, d_model, cutoffs, cfg.div_val)
        self.layers = nn.ModuleList(
            TransformerXLLayer(cfg.n_head, d_model, cfg.d_head, cfg.d_inner, cfg.dropout, cfg.dropatt,
                               cfg.pre_lnorm, untie_r=not cfg.tie_r,
                               attention=_choice(getattr(cfg, "attention", "auto")))
            for _ in range(cfg.n_layer)
        )
        if cfg.tie_r:
            self.r_w_bias = nn.Parameter(torch.empty(cfg.n_head, cfg.d_head))
            self.r_r_bias = nn.Parameter(torch.empty(cfg.n_head, cfg.d_head))
        else:
            self.r_w_bias = self.r_r_bias = None
        self.softmax = ProjectedAdaptiveSoftmax(n_token, d_embed, d_model, cutoffs, cfg.div_val)
        self.reset_parameters()
        self.tie_output_to_input()
        self.compiled_layers = CompiledLayers() if getattr(cfg, "compile", False) else None
        self._stream_memory: Dict[str, XLMemory] = {}  # memory_key -> memory of those streams
        self._stream_caches: Dict[str, InferenceCache] = {}  # memory_key -> its pass's cache
        self._cache_epoch = 0  # advanced whenever the weights may change (inference_cache.py)
        self._packed_softmax: Optional[PackedSoftmax] = None  # of the current epoch, or older/None
        self._warned_missing: set = set()
        self._warned_no_memory = False

    # ---------------------------------------------------------------- parameters
    def reset_parameters(self):
        """The originals' init: N(0, init_std) weights/embeddings/u/v, N(0, proj_init_std) projections,
        LayerNorm weights N(1, init_std), biases 0."""
        std, proj_std = self.cfg.init_std, self.cfg.proj_init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.normal_(module.weight, 1.0, std)
                nn.init.zeros_(module.bias)
        for name, param in self.named_parameters():
            if name.endswith("r_w_bias") or name.endswith("r_r_bias"):
                nn.init.normal_(param, 0.0, std)
        for proj in list(self.embed.emb_projs) + list(self.softmax.out_projs):
            nn.init.normal_(proj, 0.0, proj_std)
        if self.softmax.n_clusters > 0:
            nn.init.normal_(self.softmax.cluster_weight, 0.0, std)
            nn.init.zeros_(self.softmax.cluster_bias)

    def tie_output_to_input(self):
        """Share output weights with the input tables and the tail projections as the original does
        (the head's output projection stays separate)."""
        if not self.cfg.untie_weight:
            for out_layer, emb_layer in zip(self.softmax.out_layers, self.embed.emb_layers):
                out_layer.weight = emb_layer.weight
        if not self.cfg.untie_projs:
            for i in range(1, len(self.softmax.out_projs)):
                if self.cfg.div_val == 1:
                    self.softmax.out_projs[i] = self.embed.emb_projs[0]
                else:
                    self.softmax.out_projs[i] = self.embed.emb_projs[i]

    # ---------------------------------------------------------------- the network
    def forward_segment(self, tokens: Tensor, memory: Optional[XLMemory] = None,
                        cache: Optional[InferenceCache] = None,
                        embedded: Optional[Tensor] = None) -> Tuple[Tensor, Optional[XLMemory]]:
        """One segment over its memory, as in the paper: embed, mask and relative positions, the
        layers over ``[memory; segment]``, the new memory.

        tokens ``[B, T]``; memory: ``M`` positions of every layer's input, or None (empty).
        Returns features ``[B, T, d_model]`` and the memory after the segment (the last ``mem_len``
        positions; None when ``mem_len`` is 0). ``cache``: the inference pass's, only without
        gradients in eval mode (see :mod:`truncated_bptt.inference_cache`); None recomputes all.
        ``embedded``: the tokens' embeddings ``[B, T, d_model]`` if already computed (:meth:`forward`
        takes them from the tied-table node, see :meth:`_embed`).
        """
        if cache is not None and (torch.is_grad_enabled() or self.training):
            raise ValueError("an inference cache is only for eval mode without gradients")
        h, memory = self._input_and_memory(tokens, memory, embedded)
        qlen, mlen = tokens.size(1), 0 if memory is None else memory.length
        context = self._attention_context(qlen, mlen, h, cache)
        position_keys = [None] * len(self.layers) if cache is None \
            else cache.position_keys(self.layers, context.encodings)
        if self.training and self.cfg.dropout > 0.0:
            h = F.dropout(h, p=self.cfg.dropout)
            context = context._replace(encodings=F.dropout(context.encodings, p=self.cfg.dropout))
        writer = self._memory_writer(memory, qlen, cache, h)
        with self._offload_context():
            for i, layer in enumerate(self.layers):
                layer_memory, keys_values = writer.layer_input(i, h)
                h = self._call_layer(layer, h, context, layer_memory, keys_values, position_keys[i])
        if self.training and self.cfg.dropout > 0.0:
            h = F.dropout(h, p=self.cfg.dropout)
        return h, writer.memory_after(self.memory_options.mem_len)

    def forward_segments(self, tokens: Tensor, segment_length: int, memory: Optional[XLMemory] = None,
                         cache: Optional[InferenceCache] = None,
                         embedded: Optional[Tensor] = None) -> Tuple[Tensor, Optional[XLMemory]]:
        """Consecutive segments of ``segment_length`` tokens (the last may be shorter), each over
        the memory the previous ones left: what :meth:`forward_segment` on each in turn returns.

        tokens ``[B, N]``; returns features ``[B, N, d_model]`` and the memory after the last segment.
        In an inference pass (``cache`` given) with memory the layers run the whole block at once
        (:mod:`truncated_bptt.segment_block`); otherwise, and with ``--compile``, whose compiled
        layers take one segment, segment by segment.
        """
        if cache is None or self.memory_options.mem_len == 0 or self.compiled_layers is not None:
            return self._segments_in_turn(tokens, segment_length, memory, cache, embedded)
        h, memory = self._input_and_memory(tokens, memory, embedded)
        mem_len = self.memory_options.mem_len
        groups = plan_segments(0 if memory is None else memory.length, tokens.size(1), segment_length,
                               mem_len)
        contexts = [self._attention_context(g.qlen, g.mlen, h, cache) for g in groups]
        position_keys = [cache.position_keys(self.layers, c.encodings) for c in contexts]
        writer = GrowingWriter(self.layers, memory, tokens.size(1), mem_len, cache, h)
        for i, layer in enumerate(self.layers):
            _, keys_values = writer.layer_input(i, h)
            segments = [SegmentAttention(g, c, keys[i]) for g, c, keys in zip(groups, contexts, position_keys)]
            h = layer.forward_block(h, keys_values, segments)
        return h, writer.memory_after(mem_len)

    def _input_and_memory(self, tokens: Tensor, memory: Optional[XLMemory],
                          embedded: Optional[Tensor]) -> Tuple[Tensor, Optional[XLMemory]]:
        """The tokens' embeddings (``embedded`` if given) and the memory in their dtype."""
        h = self.embed(tokens) if embedded is None else embedded
        if memory is not None and memory.hiddens[0].dtype != h.dtype:
            memory = memory.to(dtype=h.dtype)
        return h, memory

    def _segments_in_turn(self, tokens: Tensor, segment_length: int, memory: Optional[XLMemory],
                          cache: Optional[InferenceCache],
                          embedded: Optional[Tensor]) -> Tuple[Tensor, Optional[XLMemory]]:
        """:meth:`forward_segments` one :meth:`forward_segment` after another."""
        features = []
        for start in range(0, tokens.size(1), segment_length):
            end = start + segment_length
            part = None if embedded is None else embedded[:, start:end]
            h, memory = self.forward_segment(tokens[:, start:end], memory, cache, part)
            features.append(h)
        return torch.cat(features, dim=1), memory

    def _attention_context(self, qlen: int, mlen: int, like: Tensor,
                           cache: Optional[InferenceCache]) -> AttentionContext:
        if cache is None:
            mask, encodings = self._mask_and_encodings(qlen, mlen, like)
            return AttentionContext(encodings, mask, self.r_w_bias, self.r_r_bias, None)
        mask, encodings = cache.mask_and_encodings(qlen, mlen, like, self._mask_and_encodings)
        index = None  # not in half precision, whose scores the attention normalises in fp32
        if like.dtype not in (torch.float16, torch.bfloat16):
            index = cache.position_index(qlen, mlen, encodings.size(0) - 1, mask, like.device)
        return AttentionContext(encodings, mask, self.r_w_bias, self.r_r_bias, index)

    def _mask_and_encodings(self, qlen: int, mlen: int, like: Tensor) -> Tuple[Optional[Tensor], Tensor]:
        """The attention mask ``[qlen, mlen + qlen]`` (None where nothing is hidden: a single new
        token without same_length) and the position encodings (``[mlen + qlen + 1, d_model]``, or
        fewer rows for distinct clamped distances: :func:`position_encodings`)."""
        opts = self.memory_options
        mask = None
        if qlen > 1 or opts.same_length:
            mask = attention_mask(qlen, mlen, opts.same_length, opts.mem_len, like.device,
                                  opts.same_length_mask)
        # Distinct clamped distances only, unless dropout gives each encoding row its own mask.
        distinct = not (self.training and self.cfg.dropout > 0.0)
        encodings = position_encodings(mlen + qlen, self.cfg.d_model, opts.clamp_len, like.device,
                                       like.dtype, distinct=distinct)
        return mask, encodings

    def _memory_writer(self, memory: Optional[XLMemory], qlen: int,
                       cache: Optional[InferenceCache], like: Tensor):
        """Keys/values and memory growth: in buffers with the cache, by concatenation without."""
        if cache is None or self.memory_options.mem_len == 0:
            return ConcatenatingWriter(memory)
        return GrowingWriter(self.layers, memory, qlen, self.memory_options.mem_len, cache, like)

    def _call_layer(self, layer, h, context, memory, keys_values, position_keys) -> Tensor:
        call = self.compiled_layers if self.compiled_layers is not None else _eager
        if self.training and torch.is_grad_enabled() \
                and (self.cfg.checkpoint_activations or self.cfg.offload_activations):
            return checkpoint(call, layer, h, context, memory, keys_values, position_keys,
                              use_reentrant=False)
        return call(layer, h, context, memory, keys_values, position_keys)

    def _offload_context(self):
        if self.training and torch.is_grad_enabled() and self.cfg.offload_activations:
            return torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())
        return contextlib.nullcontext()

    # ---------------------------------------------------------------- fairseq's entry point
    def forward(self, src_tokens: Tensor, src_lengths=None, incremental_state=None,
                memory_key: Optional[str] = None, segment_index: Optional[int] = None,
                segment_length: Optional[int] = None, encoder_out=None, **unused):
        """src_tokens ``[B, T]`` -> ``(features [B, T', d_model], extra)``; ``extra`` is fairseq's
        ``{"attn": [None], "inner_states": None}`` plus ``"output_weights"``: the softmax's weights
        from this forward's tied-table node, or None (see :meth:`_embed`).

        With ``incremental_state`` (generation) only the ``T'`` tokens not yet consumed are run
        (normally the last one); with ``memory_key`` the segment continues those streams (segment
        0 starts them afresh), as consecutive segments of ``segment_length`` tokens if it is longer;
        with neither it is one segment without memory.
        """
        output_weights = None
        if incremental_state is not None:
            features = self._generation_step(src_tokens, incremental_state)
        else:
            embedded, output_weights = self._embed(src_tokens)
            if memory_key is not None:
                features = self._stream_step(src_tokens, memory_key, segment_index, embedded,
                                             segment_length)
            else:
                features, _ = self.forward_segment(src_tokens, embedded=embedded)
        # output_weights: the softmax's weights from the tied-table node of this forward, or None;
        # target_log_probs takes them from here (tied_table.output_weights_of).
        return features, {"attn": [None], "inner_states": None, "output_weights": output_weights}

    def _embed(self, tokens: Tensor) -> Tuple[Tensor, Optional[TiedOutputWeights]]:
        """``[B, T]`` -> the embeddings ``[B, T, d_model]``, with the softmax's cluster weights from
        the same autograd node when training on CPU with the table tied (:mod:`truncated_bptt.tied_table`);
        else ``(self.embed(tokens), None)``."""
        table = self.embed.emb_layers[0].weight
        if not (self.training and torch.is_grad_enabled() and table.requires_grad
                and table.device.type == "cpu" and len(self.embed.emb_layers) == 1
                and len(self.softmax.out_layers) == 1 and self.softmax.out_layers[0].weight is table):
            return self.embed(tokens), None
        rows, output_weights = gather_and_split(table, tokens, self.softmax.cluster_sizes())
        return self.embed.project_rows(rows), output_weights

    def extract_features(self, prev_output_tokens: Tensor, **unused):
        """One segment without memory: ``(features [B, T, d_model], extra)``."""
        features, _ = self.forward_segment(prev_output_tokens)
        return features, {"attn": [None], "inner_states": None}

    def _stream_step(self, tokens: Tensor, key: str, segment_index,
                     embedded: Optional[Tensor] = None, segment_length: Optional[int] = None) -> Tensor:
        """The next segment of the streams ``key`` (or the next segments, of ``segment_length``
        tokens each): over their memory, which it then replaces. ``embedded``: see
        :meth:`forward_segment`."""
        index = 0 if segment_index is None else int(segment_index)
        if index == 0:  # a new pass over the split: fresh memory and, without gradients, cache
            self.reset_stream_memory(key)
        memory = self._initial_memory(tokens, key, index)
        cache = self._usable_cache(self._stream_caches.get(key))
        if cache is not None:
            self._stream_caches[key] = cache
        if segment_length is not None and tokens.size(1) > segment_length:
            features, memory = self.forward_segments(tokens, int(segment_length), memory, cache, embedded)
        else:
            features, memory = self.forward_segment(tokens, memory, cache, embedded)
        if memory is None:
            self._stream_memory.pop(key, None)
        else:
            self._stream_memory[key] = memory
        return features

    def _initial_memory(self, tokens: Tensor, key: str, index: int) -> Optional[XLMemory]:
        memory = self._stream_memory.get(key)
        if memory is None and index > 0 and key not in self._warned_missing:
            self._warned_missing.add(key)
            logger.warning(f"segment {index} of stream set '{key}' has no memory (e.g. resumed "
                           "without it); starting with empty memory")
        opts = self.memory_options
        if memory is None and opts.zero_initial_memory and opts.mem_len > 0:
            memory = XLMemory.zeros(len(self.layers), tokens.size(0), opts.mem_len, self.cfg.d_model,
                                    like=self.layers[0].attn.o_net.weight)
        if memory is not None and memory.batch_size != tokens.size(0):
            raise ValueError(
                f"stream set '{key}' has memory for {memory.batch_size} streams but the batch "
                f"has {tokens.size(0)} rows; keep the batch size fixed within a pass or start at "
                "segment 0"
            )
        return memory

    def _generation_step(self, tokens: Tensor, incremental_state) -> Tensor:
        """The tokens of ``tokens`` not consumed yet by this generation, over its memory."""
        state = self._generation_state(incremental_state) or GenerationState()
        if self.memory_options.mem_len == 0 and tokens.size(1) > 1 and not self._warned_no_memory:
            self._warned_no_memory = True
            logger.warning("mem_len is 0, so generation sees no context; pass e.g. "
                           "--model-overrides '{\"mem_len\": 512}'")
        cache = self._usable_cache(state.cache)
        features, memory = self.forward_segment(tokens[:, state.consumed:], state.memory, cache)
        self._set_generation_state(incremental_state, GenerationState(memory, tokens.size(1), cache))
        return features

    # ---------------------------------------------------------------- inference caches
    def _usable_cache(self, cache: Optional[InferenceCache]) -> Optional[InferenceCache]:
        """``cache`` if it is still valid, a new one if it is not, None outside inference."""
        if torch.is_grad_enabled() or self.training:
            return None
        if cache is not None and cache.epoch == self._cache_epoch:
            return cache
        return InferenceCache(self._cache_epoch)

    def invalidate_inference_caches(self) -> None:
        """The weights may change: no cache made so far is used again (memories stay)."""
        self._cache_epoch += 1
        self._stream_caches.clear()
        self._packed_softmax = None

    def _apply(self, fn, *args, **kwargs):
        # .to() / .half() / .cuda() / .float() replace the weights
        self.invalidate_inference_caches()
        return super()._apply(fn, *args, **kwargs)

    def _usable_packed_softmax(self, rows: int) -> Optional[PackedSoftmax]:
        """The softmax weights packed for oneDNN for this cache epoch, in inference on CPU in fp32
        where torch has oneDNN; None elsewhere (packed_weights.py). Made on first use, with the
        tail clusters packed if that call has few ``rows`` (``packed_weights.packs_tails``)."""
        if torch.is_grad_enabled() or self.training \
                or not can_pack(self.softmax.out_layers[0].weight):
            return None
        if self._packed_softmax is None or self._packed_softmax.epoch != self._cache_epoch:
            clusters = self.softmax.packed_clusters(packs_tails(rows))
            self._packed_softmax = PackedSoftmax(self._cache_epoch, clusters)
        return self._packed_softmax

    def train(self, mode: bool = True):
        if mode:
            self.invalidate_inference_caches()
        return super().train(mode)

    def set_num_updates(self, num_updates):
        """Called by fairseq's trainer (through the model) after every optimizer step."""
        self.invalidate_inference_caches()

    def _load_from_state_dict(self, *args, **kwargs):
        self.invalidate_inference_caches()
        super()._load_from_state_dict(*args, **kwargs)

    def set_memory_options(self, **changes) -> None:
        """Change ``mem_len`` / ``clamp_len`` / ``same_length`` / ``zero_initial_memory`` /
        ``same_length_mask`` (validated)."""
        self.memory_options = dataclasses.replace(self.memory_options, **changes)
        self.invalidate_inference_caches()

    # ---------------------------------------------------------------- outputs
    def target_log_probs(self, features: Tensor, target: Tensor,
                         output_weights: Optional[TiedOutputWeights] = None) -> Tensor:
        """features ``[B, T, d_model]``, target ``[B, T]`` -> fp32 ``[B, T]`` log p(target).
        ``output_weights``: those the forward that made ``features`` returned beside them
        (``tied_table.output_weights_of(net_output)``); without them the softmax slices its table."""
        weights = None if output_weights is None else output_weights.clusters
        hidden = features.reshape(-1, features.size(-1))
        flat = self.softmax.target_log_probs(hidden, target.reshape(-1),
                                             self._usable_packed_softmax(hidden.size(0)), weights)
        return flat.view(target.shape)

    def output_layer(self, features: Tensor, **unused) -> Tensor:
        """Full fp32 log-probabilities ``[B, T, V]`` (generation-sized inputs only)."""
        hidden = features.reshape(-1, features.size(-1))
        flat = self.softmax.log_probs(hidden, self._usable_packed_softmax(hidden.size(0)))
        return flat.view(*features.shape[:-1], flat.size(-1))

    def get_normalized_probs(self, net_output, log_probs: bool, sample=None):
        """fairseq's accessor, in two forms:

        - without ``sample["target"]`` (generation): the real distribution, fp32 ``[B, T, V]``;
        - with ``sample["target"]`` ``[B, T]`` (fairseq-eval-lm's SequenceScorer, which only ever
          gathers the target's entry): a ``[B, T, V]`` *broadcast view* whose every entry of row
          ``(b, t)`` is the target's (log-)probability, computed target-indexed without
          vocabulary-wide logits. Only the entry at the target is a probability of that word;
          use :meth:`output_layer` or call without a target for a distribution.
        """
        features = net_output[0]
        target = sample.get("target") if isinstance(sample, dict) else None
        if target is not None:
            lp = self.target_log_probs(features, target, output_weights_of(net_output))
            out = lp.unsqueeze(-1).expand(*lp.shape, len(self.dictionary))
        else:
            out = self.output_layer(features)
        return out if log_probs else out.exp()

    def max_positions(self):
        return UNLIMITED_POSITIONS

    # ---------------------------------------------------------------- memory API
    def get_stream_memory(self, memory_key: str) -> Optional[XLMemory]:
        """The memory of stream set ``memory_key`` after its last segment, or None."""
        return self._stream_memory.get(memory_key)

    def set_stream_memory(self, memory_key: str, memory: XLMemory) -> None:
        """Continue stream set ``memory_key`` from ``memory`` (e.g. restored from a checkpoint)."""
        if len(memory.hiddens) != len(self.layers):
            raise ValueError(f"memory of {len(memory.hiddens)} layers given to a model of "
                             f"{len(self.layers)} layers")
        self._stream_memory[memory_key] = XLMemory([h.detach() for h in memory.hiddens])
        self._stream_caches.pop(memory_key, None)

    def reset_stream_memory(self, memory_key: Optional[str] = None) -> None:
        """Forget the memory (and inference cache) of ``memory_key``, or of every stream set."""
        if memory_key is None:
            self._stream_memory.clear()
            self._stream_caches.clear()
        else:
            self._stream_memory.pop(memory_key, None)
            self._stream_caches.pop(memory_key, None)

    def start_generation(self, incremental_state, memory: Optional[XLMemory]) -> None:
        """Make a new generation (an empty ``incremental_state``) start over ``memory``."""
        self._set_generation_state(incremental_state, GenerationState(memory=memory))

    def generation_memory(self, incremental_state) -> Optional[XLMemory]:
        """The memory of a generation after the tokens it has consumed, or None."""
        state = self._generation_state(incremental_state)
        return None if state is None else state.memory

    def reorder_incremental_state(self, incremental_state, new_order: Tensor):
        """Beam search: row ``b`` of the memory (and its cached keys/values) becomes ``new_order[b]``."""
        state = self._generation_state(incremental_state)
        if state is not None and state.memory is not None:
            state = dataclasses.replace(state, memory=state.memory.select_rows(new_order))
            self._set_generation_state(incremental_state, state)

    # fairseq's incremental state is a dict of dicts; ours holds one GenerationState.
    def _generation_state(self, incremental_state) -> Optional[GenerationState]:
        entry = self.get_incremental_state(incremental_state, "generation")
        return None if entry is None else entry["state"]

    def _set_generation_state(self, incremental_state, state: GenerationState) -> None:
        self.set_incremental_state(incremental_state, "generation", {"state": state})


# -------------------------------------------------------------------- presets
def _defaults(args, **values):
    for name, value in values.items():
        setattr(args, name, getattr(args, name, value))


@register_model_architecture("transformer_xl", "transformer_xl_wt103_base")
def transformer_xl_wt103_base(args):
    """NVIDIA's WT103 base: 16 x 512, 8 heads x 64, d_inner 2048, dropout 0.1, shared u/v."""
    _defaults(args, n_layer=16, d_model=512, n_head=8, d_head=64, d_inner=2048, div_val=1,
              cutoffs=[20000, 40000, 200000], dropout=0.1, dropatt=0.0, mem_len=192, tie_r=True)


@register_model_architecture("transformer_xl", "transformer_xl_wt103_large")
def transformer_xl_wt103_large(args):
    """NVIDIA's WT103 large: 18 x 1024, 16 heads x 64, d_inner 4096, div_val 4, dropout/dropatt 0.2."""
    _defaults(args, n_layer=18, d_model=1024, n_head=16, d_head=64, d_inner=4096, div_val=4,
              cutoffs=[20000, 40000, 200000], dropout=0.2, dropatt=0.2, mem_len=384, tie_r=True)


@register_model_architecture("transformer_xl", "transformer_xl_paper_base")
def transformer_xl_paper_base(args):
    """The paper's WT103 base as fairseq's example trains it: 16 x 410, 10 heads x 41, d_inner 2100,
    dropout 0.1, dropatt 0.0, per-layer u/v, tied (151,123,537 parameters with WT103's dictionary)."""
    _defaults(args, n_layer=16, d_model=410, n_head=10, d_head=41, d_inner=2100, div_val=1,
              cutoffs=[20000, 40000, 200000], dropout=0.1, dropatt=0.0, mem_len=150, tie_r=False)


@register_model_architecture("transformer_xl", "transformer_xl_tiny")
def transformer_xl_tiny(args):
    """A small model for CPU runs: 2 x 64, 2 heads x 32, d_inner 256."""
    _defaults(args, n_layer=2, d_model=64, n_head=2, d_head=32, d_inner=256, div_val=1,
              cutoffs=[2000, 10000], dropout=0.1, dropatt=0.0, mem_len=32, tie_r=False)
