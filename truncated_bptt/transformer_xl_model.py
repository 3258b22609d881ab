"""Transformer-XL language model (Dai et al. 2019) for fairseq: ``--arch transformer_xl`` and presets.

Our own implementation of the authors' / NVIDIA's formulation (no HuggingFace dependency), with the
option names and defaults of fairseq's ``examples/truncated_bptt`` so its command lines run unchanged.

Memory ("recurrence"): every layer keeps its inputs of the last ``mem_len`` positions, detached, in
the model's dtype, batch-first ``[B, M, d_model]``. Memory lives in fairseq incremental-state dicts:
one per stream set (``memory_key``: "train", "valid", ...) held by the decoder for streaming
training/evaluation, and the ``incremental_state`` fairseq's SequenceGenerator passes for generation.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.dataclass import FairseqDataclass
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
from truncated_bptt.memory_buffers import MemoryBuffers
from truncated_bptt.projected_adaptive_softmax import ProjectedAdaptiveSoftmax
from truncated_bptt.relative_attention import attention_mask, position_encodings
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
        default=False, metadata={"help": "every query sees the same number (mem_len) of keys"}
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
    zero_initial_memory: bool = field(
        default=False, metadata={"help": "start every stream with mem_len zero vectors of memory, as "
                                         "HuggingFace's TransfoXL (and so fairseq's example) does; "
                                         "default: empty memory, as the authors and NVIDIA"}
    )
    tokens_per_sample: int = II("task.tokens_per_sample")


def clip_cutoffs(cutoffs: List[int], n_token: int) -> List[int]:
    """Drop cutoffs that do not fall inside the vocabulary, as fairseq's example does."""
    return [c for c in cutoffs if c < n_token]


def validate_config(cfg, n_token: int) -> None:
    """Raise a one-line ValueError naming the bad option and the fix."""
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
    check_memory_options(cfg)
    for name in ("dropout", "dropatt"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise ValueError(f"--{name} must be in [0, 1), got {getattr(cfg, name)}")


def check_memory_options(cfg) -> None:
    if cfg.mem_len < 0:
        raise ValueError(f"mem_len must be >= 0, got {cfg.mem_len}")
    if cfg.same_length and cfg.mem_len <= 0:
        raise ValueError("same_length needs mem_len > 0 (each query sees mem_len keys); set --mem-len")


@register_model("transformer_xl", dataclass=TransformerXLConfig)
class TransformerXLLanguageModel(FairseqLanguageModel):
    @classmethod
    def build_model(cls, cfg: TransformerXLConfig, task):
        from truncated_bptt.truncated_bptt_lm_task import TruncatedBPTTLMTask

        # fairseq-eval-lm/-generate build the task from the command line, not from the checkpoint:
        # under fairseq's default `language_modeling` every segment would be scored without memory
        # and the run would look fine. Refuse instead of reporting a silently wrong perplexity.
        if not isinstance(task, TruncatedBPTTLMTask):
            raise ValueError(
                f"transformer_xl needs --task truncated_bptt_lm (got task "
                f"{getattr(task.cfg, '_name', type(task).__name__)!r}): only that task feeds the "
                "model its streams in order with memory; add --task truncated_bptt_lm"
            )
        return cls(TransformerXLDecoder(cfg, task.target_dictionary))

    def forward(self, src_tokens, src_lengths=None, incremental_state=None, memory_key=None,
                segment_index=None, **kwargs):
        return self.decoder(src_tokens, src_lengths=src_lengths, incremental_state=incremental_state,
                            memory_key=memory_key, segment_index=segment_index)

    def max_positions(self):
        return UNLIMITED_POSITIONS


class TransformerXLDecoder(FairseqIncrementalDecoder):
    """Adaptive input -> ``n_layer`` relative-attention layers over memory -> projected adaptive softmax."""

    def __init__(self, cfg, dictionary):
        super().__init__(dictionary)
        n_token = len(dictionary)
        validate_config(cfg, n_token)
        self.cfg = cfg
        self.padding_idx = dictionary.pad()
        d_model = cfg.d_model
        d_embed = cfg.d_embed if cfg.d_embed > 0 else d_model
        cutoffs = clip_cutoffs(list(cfg.cutoffs), n_token)
        self.embed = AdaptiveInput(n_token, d_embed, d_model, cutoffs, cfg.div_val)
        self.layers = nn.ModuleList(
            TransformerXLLayer(cfg.n_head, d_model, cfg.d_head, cfg.d_inner, cfg.dropout, cfg.dropatt,
                               cfg.pre_lnorm, untie_r=not cfg.tie_r)
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
        # memory_key -> fairseq incremental-state dict holding that stream set's memory
        self._stream_states: Dict[str, Dict[str, Dict[str, Optional[Tensor]]]] = {}
        self._warned_missing: set = set()
        self._warned_no_memory = False
        self._pos_key_cache = None  # (key, per-layer positional keys), see _cached_position_keys
        self._constants_cache: Dict[tuple, Tuple[Optional[Tensor], Tensor]] = {}  # see _mask_and_encodings

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

    # ---------------------------------------------------------------- forward
    def forward(self, src_tokens: Tensor, src_lengths=None, incremental_state=None,
                memory_key: Optional[str] = None, segment_index: Optional[int] = None,
                encoder_out=None, **unused):
        """src_tokens ``[B, T]`` -> ``(features [B, T', d_model], {"attn": [None], "inner_states": None})``.

        ``T' = T`` except in generation, where only the tokens not yet consumed by
        ``incremental_state`` are processed (normally the last one).
        """
        if incremental_state is not None:
            features = self._forward_incremental(src_tokens, incremental_state)
        elif memory_key is not None:
            features = self._forward_stream(src_tokens, memory_key, segment_index)
        else:
            features, _ = self.extract_features(src_tokens, None)
        return features, {"attn": [None], "inner_states": None}

    def _forward_stream(self, tokens: Tensor, key: str, segment_index) -> Tensor:
        state = None
        if segment_index is not None and int(segment_index) > 0:
            state = self._saved_memory(self._stream_states.get(key))
            if state is None and key not in self._warned_missing:
                self._warned_missing.add(key)
                logger.warning(f"segment {int(segment_index)} of stream set '{key}' has no memory "
                               "(e.g. resumed without it); starting with empty memory")
        if state is None and getattr(self.cfg, "zero_initial_memory", False) and self.cfg.mem_len > 0:
            zeros = torch.zeros(tokens.size(0), self.cfg.mem_len, self.cfg.d_model, device=tokens.device)
            state = {f"layer_{i}": zeros for i in range(len(self.layers))}
        if state is not None and state["layer_0"].size(0) != tokens.size(0):
            raise ValueError(
                f"stream set '{key}' has memory for {state['layer_0'].size(0)} streams but the batch "
                f"has {tokens.size(0)} rows; keep the batch size fixed within a pass or start at "
                "segment 0"
            )
        features, new_state = self._run(tokens, state)
        if new_state is None:
            self.reset_stream_memory(key)
        else:
            self.set_incremental_state(self._stream_states.setdefault(key, {}), "memory", new_state)
        return features

    def _forward_incremental(self, tokens: Tensor, incremental_state) -> Tensor:
        state = self.get_incremental_state(incremental_state, "memory")
        consumed = 0 if state is None else int(state["consumed"])
        if self.cfg.mem_len == 0 and tokens.size(1) > 1 and not self._warned_no_memory:
            self._warned_no_memory = True
            logger.warning("mem_len is 0, so generation sees no context; pass e.g. "
                           "--model-overrides '{\"mem_len\": 512}'")
        features, new_state = self._run(tokens[:, consumed:], self._saved_memory(state))
        new_state = dict(new_state or {})
        # "consumed" is a CPU scalar: reading it never synchronises with an accelerator.
        new_state["consumed"] = torch.tensor(tokens.size(1))
        self.set_incremental_state(incremental_state, "memory", new_state)
        return features

    def _saved_memory(self, state) -> Optional[Dict[str, Tensor]]:
        """The memory entries of an incremental-state dict (or of a stream's dict), or None."""
        if state is not None and "layer_0" not in state:  # a stream's incremental-state dict
            state = self.get_incremental_state(state, "memory")
        if state is None or "layer_0" not in state:
            return None
        return state

    def extract_features(self, tokens: Tensor, mems: Optional[List[Tensor]] = None,
                         **unused) -> Tuple[Tensor, Optional[List[Tensor]]]:
        """tokens ``[B, T]``, mems: ``n_layer`` tensors ``[B, M, d_model]`` or None.

        Returns features ``[B, T, d_model]`` and the new memory (None when ``mem_len == 0``).
        """
        state = None if mems is None else {f"layer_{i}": m for i, m in enumerate(mems)}
        features, new_state = self._run(tokens, state)
        if new_state is None:
            return features, None
        return features, [new_state[f"layer_{i}"] for i in range(len(self.layers))]

    def _run(self, tokens: Tensor, state: Optional[Dict[str, Tensor]]
             ) -> Tuple[Tensor, Optional[Dict[str, object]]]:
        """The network over ``[memory; tokens]``.

        ``state`` holds the memory: ``layer_i`` ``[B, M, d_model]`` for every layer, and, when it
        was made without gradients, ``kv_i`` ``[B, M, 2, n_head, d_head]`` (the memory's keys and
        values) with ``cached_for_weights`` identifying the parameters they were computed with.
        Those are reused while the parameters are unchanged and gradients are off (evaluation, generation),
        so a step never recomputes keys/values of the whole memory. Returns features
        ``[B, T, d_model]`` and the new state (None when ``mem_len == 0``).
        """
        cfg = self.cfg
        check_memory_options(cfg)
        # Read once: cfg is an omegaconf node, whose attribute access is slow at this call rate.
        mem_len, same_length, clamp_len, dropout = cfg.mem_len, cfg.same_length, cfg.clamp_len, cfg.dropout
        bsz, qlen = tokens.shape
        h = self.embed(tokens)
        n_layer = len(self.layers)
        mems = kvs = None
        if state is not None:
            mems = [state[f"layer_{i}"].to(h) for i in range(n_layer)]
        cache_kv = not torch.is_grad_enabled() and mem_len > 0
        weights_token = self._weights_token() if cache_kv else None
        if cache_kv and state is not None and "kv_0" in state \
                and state.get("cached_for_weights") == weights_token:
            kvs = [state[f"kv_{i}"] for i in range(n_layer)]
        mlen = mems[0].size(1) if mems is not None else 0
        mask, pos_emb = self._mask_and_encodings(qlen, mlen, mem_len, same_length, clamp_len, h)
        if dropout > 0.0 and self.training:
            h = F.dropout(h, p=dropout)
            pos_emb = F.dropout(pos_emb, p=dropout)

        use_checkpoint = self.training and torch.is_grad_enabled() \
            and (cfg.checkpoint_activations or cfg.offload_activations)
        pos_keys = self._cached_position_keys(pos_emb, clamp_len, weights_token) if cache_kv \
            else [None] * n_layer
        buffers = self._memory_buffers(state, mems, kvs, mlen, qlen, mem_len) if kvs is not None else None
        hids, new_kvs = [], []
        with self._offload_context(use_checkpoint):
            for i, layer in enumerate(self.layers):
                kv_out = None
                if buffers is not None:  # [memory; segment] as views of the buffers, no copies
                    hid = buffers.extended(f"layer_{i}", mlen, qlen)
                    hid[:, mlen:].copy_(h)
                    hids.append(hid)
                    kv_out = buffers.extended(f"kv_{i}", mlen, qlen)
                else:
                    hids.append(h)
                args = (h, pos_emb, mask, None if mems is None else mems[i], self.r_w_bias,
                        self.r_r_bias, None if kvs is None else kvs[i], pos_keys[i], kv_out)
                if use_checkpoint:
                    h, kv = checkpoint(layer, *args, use_reentrant=False)
                else:
                    h, kv = layer(*args)
                if cache_kv:
                    new_kvs.append(kv)
        if dropout > 0.0 and self.training:
            h = F.dropout(h, p=dropout)
        if mem_len == 0:
            return h, None
        new_state: Dict[str, object] = {}
        if buffers is not None:  # hids and new_kvs cover [memory; segment]
            buffers.advance(qlen)
            for i in range(n_layer):
                new_state[f"layer_{i}"] = hids[i][:, -mem_len:]
                new_state[f"kv_{i}"] = new_kvs[i][:, -mem_len:]
            new_state["buffers"] = buffers
            new_state["cached_for_weights"] = weights_token
            return h, new_state
        keep = min(mlen, max(mem_len - qlen, 0))  # old memory positions that stay
        with torch.no_grad():
            for i, hid in enumerate(hids):
                new = hid[:, -mem_len:]
                if keep > 0:
                    new = torch.cat([mems[i][:, mlen - keep:], new], dim=1)
                new_state[f"layer_{i}"] = new.detach().contiguous()
            for i, kv in enumerate(new_kvs):  # kv already covers [memory; tokens]
                new_state[f"kv_{i}"] = kv[:, -mem_len:].contiguous()
        if cache_kv:
            new_state["cached_for_weights"] = weights_token
        return h, new_state

    def _memory_buffers(self, state, mems: List[Tensor], kvs: List[Tensor], mlen: int, qlen: int,
                        mem_len: int) -> MemoryBuffers:
        """Buffers holding this state's memory and cached keys/values with room for ``qlen`` more
        positions: the state's own (made by the previous step) while nothing else appended to them,
        else fresh ones (one copy, as a step without buffers would make)."""
        memories = {f"layer_{i}": m for i, m in enumerate(mems)}
        memories.update((f"kv_{i}", kv) for i, kv in enumerate(kvs))
        buffers = state.get("buffers")
        if not (isinstance(buffers, MemoryBuffers) and buffers.holds(memories)
                and mlen + qlen <= buffers.capacity):
            # room for mem_len / qlen steps (or mem_len single tokens) between compactions
            buffers = MemoryBuffers(memories, capacity=max(mlen, mem_len) + max(qlen, mem_len))
        buffers.make_room(mlen, qlen)
        return buffers

    def _mask_and_encodings(self, qlen: int, mlen: int, mem_len: int, same_length: bool,
                            clamp_len: int, like: Tensor) -> Tuple[Optional[Tensor], Tensor]:
        """The attention mask ``[qlen, mlen + qlen]`` (None where nothing is hidden) and the position
        encodings ``[mlen + qlen + 1, d_model]`` (row 0 is the zero pad rel_shift relies on).

        Both depend on shapes and options only, so they are kept for reuse: streaming repeats the same
        few shapes every segment. Callers must not modify them in place.
        """
        key = (qlen, mlen, mem_len, same_length, clamp_len, like.dtype, like.device)
        cached = self._constants_cache.get(key)
        if cached is None:
            # A single new token (generation) may see every key unless same_length.
            mask = None
            if qlen > 1 or same_length:
                mask = attention_mask(qlen, mlen, same_length, mem_len, device=like.device)
            pos_emb = position_encodings(mlen + qlen, self.cfg.d_model, clamp_len, like.device, like.dtype)
            if len(self._constants_cache) >= 16:  # e.g. generation: a new klen every step
                self._constants_cache.clear()
            cached = self._constants_cache[key] = (mask, pos_emb)
        return cached

    def _cached_position_keys(self, pos_emb: Tensor, clamp_len: int, weights_token) -> List[Tensor]:
        """Every layer's ``r_net(pos_emb)`` (one GEMM for all layers), kept while the length, clamp,
        dtype and parameters stay the same: consecutive evaluation segments share them."""
        key = (pos_emb.shape, clamp_len, pos_emb.dtype, pos_emb.device, weights_token)
        if self._pos_key_cache is None or self._pos_key_cache[0] != key:
            weight = torch.cat([layer.attn.r_net.weight for layer in self.layers], dim=0)
            keys = F.linear(pos_emb, weight).split([l.attn.r_net.out_features for l in self.layers], 1)
            self._pos_key_cache = (key, [k.contiguous() for k in keys])
        return self._pos_key_cache[1]

    def _weights_token(self):
        """Identifies the current parameter values: storage, in-place update count, dtype."""
        return tuple((p.data_ptr(), p._version, p.dtype) for p in self.parameters())

    def _offload_context(self, use_checkpoint: bool):
        if use_checkpoint and self.cfg.offload_activations:
            return torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())
        return _NullContext()

    # ---------------------------------------------------------------- outputs
    def target_log_probs(self, features: Tensor, target: Tensor) -> Tensor:
        """features ``[B, T, d_model]``, target ``[B, T]`` -> fp32 ``[B, T]`` log p(target)."""
        flat = self.softmax.target_log_probs(features.reshape(-1, features.size(-1)), target.reshape(-1))
        return flat.view(target.shape)

    def output_layer(self, features: Tensor, **unused) -> Tensor:
        """Full fp32 log-probabilities ``[B, T, V]`` (generation-sized inputs only)."""
        flat = self.softmax.log_probs(features.reshape(-1, features.size(-1)))
        return flat.view(*features.shape[:-1], flat.size(-1))

    def get_normalized_probs(self, net_output, log_probs: bool, sample=None):
        """With ``sample["target"]``: a ``[B, T, V]`` stride-0 view of the target log-probs (only the
        entries at the targets are meaningful). Without: real full (log-)probabilities."""
        features = net_output[0]
        target = sample.get("target") if isinstance(sample, dict) else None
        if target is not None:
            lp = self.target_log_probs(features, target)
            out = lp.unsqueeze(-1).expand(*lp.shape, len(self.dictionary))
        else:
            out = self.output_layer(features)
        return out if log_probs else out.exp()

    def max_positions(self):
        return UNLIMITED_POSITIONS

    # ---------------------------------------------------------------- memory API
    def get_stream_memory(self, memory_key: str) -> Optional[List[Tensor]]:
        """Memory of stream set ``memory_key``: ``n_layer`` tensors ``[B, M, d_model]``, or None."""
        state = self._saved_memory(self._stream_states.get(memory_key))
        if state is None:
            return None
        return [state[f"layer_{i}"] for i in range(len(self.layers))]

    def set_stream_memory(self, memory_key: str, mems: List[Tensor]) -> None:
        if len(mems) != len(self.layers):
            raise ValueError(f"set_stream_memory got {len(mems)} tensors for {len(self.layers)} layers")
        state = self._stream_states.setdefault(memory_key, {})
        self.set_incremental_state(
            state, "memory", {f"layer_{i}": m.detach() for i, m in enumerate(mems)}
        )

    def reset_stream_memory(self, memory_key: Optional[str] = None) -> None:
        if memory_key is None:
            self._stream_states.clear()
        else:
            self._stream_states.pop(memory_key, None)

    def reorder_incremental_state(self, incremental_state, new_order: Tensor):
        """Beam search: row ``b`` of the memory (and cached keys/values) becomes ``new_order[b]``."""
        state = self.get_incremental_state(incremental_state, "memory")
        if state is None:
            return
        reordered = {
            k: v.index_select(0, new_order) if k.startswith(("layer_", "kv_")) else v
            for k, v in state.items() if k != "buffers"  # reordered rows live in new tensors
        }
        self.set_incremental_state(incremental_state, "memory", reordered)


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


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
