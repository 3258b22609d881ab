"""Import Transformer-XL weights trained elsewhere (HuggingFace TransfoXL, NVIDIA DeepLearningExamples)
as a fairseq ``transformer_xl`` checkpoint plus ``dict.txt``.

Readers turn a source into a :class:`SourceModel` (our parameter roles, the source's vocabulary
order); :func:`convert` maps the vocabulary onto a fairseq dictionary and writes the checkpoint.

Vocabulary (why log-probabilities are preserved exactly): a fairseq dictionary starts with
``<s> <pad> </s> <unk>`` (ids 0-3). The source's own end-of-line and unknown symbols (``<eos>``,
``<unk>``) become fairseq's ``</s>`` and ``<unk>`` (ids 2 and 3), so fairseq-preprocess'd text means
to the converted model what it meant to the source; every other source symbol keeps its relative
order from id 4 on. Both specials must lie in the source's head cluster, so each tail cluster is the
source's cluster shifted by the same offset (cutoffs shift by it) and only the head is permuted. The
head softmax is a log-softmax, invariant under permuting its entries; the ids without a source
symbol (``<s>``, ``<pad>``, and ``</s>``/``<unk>`` if the source has none) get zero embeddings and
output weights and a bias of :data:`DEAD_LOGIT`, whose ``exp`` underflows to exactly 0 in fp32
against any real logit, so the normalisation over the source's symbols is unchanged.

Cluster logits: HuggingFace (like the authors' TF code and this model) reads tail cluster ``i``'s
head probability from head column ``shortlist + i - 1``; NVIDIA's PyTorch code (like the authors'
PyTorch code) reads column ``-i``, i.e. its ``cluster_weight`` rows are in reverse cluster order:
they are reversed on import.

same_length: the authors' and HuggingFace's mask lets each query see ``mem_len`` keys, NVIDIA's
``mem_len + 1``; the converted model carries its source's (``same_length_mask``), so it scores as
the source's own code does with same_length on, whichever options it is evaluated with.
"""
import json
import logging
import os
import pickle
import types
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

# Bias of the output entries that no source symbol maps to: exp(DEAD_LOGIT - any real logit) is 0
# in fp32, and the value stays finite in fp16/bf16 (no inf ever meets training arithmetic).
DEAD_LOGIT = -1e4
FAIRSEQ_SPECIALS = 4  # <s> <pad> </s> <unk>


class UntrustedPickleError(ValueError):
    pass


@dataclass
class SourceModel:
    """A Transformer-XL in our parameter roles, vocabulary in the SOURCE's order.

    Shapes: ``embed_tables[c]`` ``[size_c, d_emb_c]`` (one table for all tokens when div_val == 1),
    ``embed_projs[c]`` ``[d_model, d_emb_c]``, ``out_weights``/``out_biases`` like the tables,
    ``out_projs[c]`` ``[d_model, d_emb_c]`` or None, ``cluster_weight`` ``[n_tail, d_embed]`` with
    row ``i - 1`` for tail cluster ``i``. ``layers[l]`` maps our names (``attn.qkv_net.weight``, ...)
    to tensors; ``r_w_bias``/``r_r_bias`` ``[n_head, d_head]`` when shared by all layers.
    """

    symbols: List[str]
    options: Dict[str, object]
    embed_tables: List[Tensor]
    embed_projs: List[Tensor]
    out_weights: List[Tensor]
    out_biases: List[Tensor]
    out_projs: List[Optional[Tensor]]
    cluster_weight: Optional[Tensor]
    cluster_bias: Optional[Tensor]
    layers: List[Dict[str, Tensor]]
    r_w_bias: Optional[Tensor] = None
    r_r_bias: Optional[Tensor] = None
    counts: Optional[List[int]] = None
    tokens_per_sample: int = 128


# ----------------------------------------------------------------------------- pickles
class _Opaque:
    """Stands for a class of the source code base that is not installed (e.g. NVIDIA's Vocab)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self._state = state


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Opaque,), {"__module__": module})


_tolerant_pickle = types.ModuleType("truncated_bptt_tolerant_pickle")
_tolerant_pickle.Unpickler = _TolerantUnpickler
_tolerant_pickle.load = lambda f, **kw: _TolerantUnpickler(f, **kw).load()
_tolerant_pickle.__dict__.update(dumps=pickle.dumps, loads=pickle.loads, dump=pickle.dump,
                                 Pickler=pickle.Pickler)


def _require_trust(path: str, trust_pickle: bool, what: str) -> None:
    if not trust_pickle:
        raise UntrustedPickleError(
            f"{path} is a pickle ({what}); unpickling runs code from the file. If you trust its "
            "source, pass --trust-pickle (or give the vocabulary as a text file with --vocab)"
        )


def load_pickle(path: str, trust_pickle: bool):
    _require_trust(path, trust_pickle, "a Python pickle")
    with open(path, "rb") as f:
        return _TolerantUnpickler(f).load()


def load_torch(path: str, trust_pickle: bool):
    """State dicts load with ``weights_only=True``; anything else needs ``trust_pickle``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # holds Python objects beyond tensors and containers
        _require_trust(path, trust_pickle, "a torch checkpoint holding Python objects")
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_tolerant_pickle)


# ----------------------------------------------------------------------------- vocabularies
def read_vocab_text(path: str) -> Tuple[List[str], Optional[List[int]]]:
    """One symbol per line, optionally followed by a count (first column is the symbol)."""
    symbols, counts = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split()
            if not parts:
                continue
            symbols.append(parts[0])
            counts.append(int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None)
    return symbols, (counts if all(c is not None for c in counts) else None)


def vocab_from_object(vocab) -> Tuple[List[str], Optional[List[int]]]:
    """``idx2sym`` (+ ``counter``) of a HuggingFace tokenizer dict / NVIDIA Vocab object."""
    state = vocab if isinstance(vocab, dict) else getattr(vocab, "__dict__", {})
    symbols = state.get("idx2sym")
    if not symbols:
        raise ValueError("the vocabulary object has no idx2sym list (e.g. a GPT-2 BPE vocabulary); "
                         "pass the symbols in order as a text file with --vocab")
    counter = state.get("counter") or {}
    counts = [int(counter.get(s, 0)) for s in symbols] if counter else None
    return list(symbols), counts


# ----------------------------------------------------------------------------- readers
def _layer_from(state: Dict[str, Tensor], prefix: str, per_layer_bias: bool) -> Dict[str, Tensor]:
    """One source layer (HF and NVIDIA share these names) in our names."""
    layer = {
        "attn.qkv_net.weight": state[f"{prefix}dec_attn.qkv_net.weight"],
        "attn.r_net.weight": state[f"{prefix}dec_attn.r_net.weight"],
        "attn.o_net.weight": state[f"{prefix}dec_attn.o_net.weight"],
        "attn.layer_norm.weight": state[f"{prefix}dec_attn.layer_norm.weight"],
        "attn.layer_norm.bias": state[f"{prefix}dec_attn.layer_norm.bias"],
        "ff.fc1.weight": state[f"{prefix}pos_ff.CoreNet.0.weight"],
        "ff.fc1.bias": state[f"{prefix}pos_ff.CoreNet.0.bias"],
        "ff.fc2.weight": state[f"{prefix}pos_ff.CoreNet.3.weight"],
        "ff.fc2.bias": state[f"{prefix}pos_ff.CoreNet.3.bias"],
        "ff.layer_norm.weight": state[f"{prefix}pos_ff.layer_norm.weight"],
        "ff.layer_norm.bias": state[f"{prefix}pos_ff.layer_norm.bias"],
    }
    if per_layer_bias:
        layer["r_w_bias"] = state[f"{prefix}dec_attn.r_w_bias"]
        layer["r_r_bias"] = state[f"{prefix}dec_attn.r_r_bias"]
    return layer


def _indexed(state: Dict[str, Tensor], prefix: str) -> Dict[int, Tensor]:
    """``{i: tensor}`` of the keys ``prefix{i}`` (ParameterLists skip their None entries)."""
    out = {}
    for key, value in state.items():
        if key.startswith(prefix) and key[len(prefix):].isdigit():
            out[int(key[len(prefix):])] = value
    return out


def _check_architecture(attn_type, sample_softmax, adaptive=True):
    if attn_type not in (0, None):
        raise ValueError(f"attn_type {attn_type} is not Transformer-XL's relative attention (0); "
                         "only attn_type 0 checkpoints can be converted")
    if sample_softmax is not None and sample_softmax > 0:
        raise ValueError("checkpoints trained with a sampled softmax (sample_softmax > 0) are not "
                         "supported")
    if not adaptive:
        raise ValueError("only checkpoints with the adaptive softmax (adaptive=True) are supported")


def _model_options(n_layer, d_model, n_head, d_head, d_inner, d_embed, div_val, cutoffs, mem_len,
                   clamp_len, same_length, pre_lnorm, dropout, dropatt, tie_r, same_length_mask):
    """``same_length_mask``: the source code's same_length mask (see
    :func:`truncated_bptt.relative_attention.attention_mask`), kept even when the source ran
    without same_length, so that turning it on at evaluation scores as the source's code does."""
    return dict(n_layer=n_layer, d_model=d_model, n_head=n_head, d_head=d_head, d_inner=d_inner,
                d_embed=d_embed, div_val=div_val, cutoffs=list(cutoffs), mem_len=mem_len,
                clamp_len=clamp_len, same_length=bool(same_length), pre_lnorm=bool(pre_lnorm),
                dropout=dropout, dropatt=dropatt, tie_r=tie_r, same_length_mask=same_length_mask)


def read_huggingface(model_dir: str, vocab: Optional[str] = None, trust_pickle: bool = False
                     ) -> SourceModel:
    """A ``TransfoXLLMHeadModel`` directory: ``config.json``, ``pytorch_model.bin`` (or
    ``model.safetensors``), and ``vocab.pkl`` (a pickle: needs ``trust_pickle``) unless ``vocab``
    names a text vocabulary (one symbol per line, in id order)."""
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{model_dir} has no config.json: pass a save_pretrained() directory")
    with open(config_path, encoding="utf-8") as f:
        cfg = json.load(f)
    weights = os.path.join(model_dir, "pytorch_model.bin")
    if os.path.isfile(weights):
        state = load_torch(weights, trust_pickle)
    elif os.path.isfile(os.path.join(model_dir, "model.safetensors")):
        from safetensors.torch import load_file

        state = load_file(os.path.join(model_dir, "model.safetensors"))
    else:
        raise FileNotFoundError(f"{model_dir} has neither pytorch_model.bin nor model.safetensors")
    if vocab is not None:
        symbols, counts = read_vocab_text(vocab)
    else:
        pkl = os.path.join(model_dir, "vocab.pkl")
        if not os.path.isfile(pkl):
            raise FileNotFoundError(f"{model_dir} has no vocab.pkl: pass the vocabulary with --vocab")
        symbols, counts = vocab_from_object(load_pickle(pkl, trust_pickle))
    return huggingface_source(state, cfg, symbols, counts)


def huggingface_source(state: Dict[str, Tensor], cfg: Dict[str, object], symbols: List[str],
                       counts: Optional[List[int]] = None) -> SourceModel:
    """A ``TransfoXLLMHeadModel``'s ``state_dict()`` (keys ``transformer.*``, ``crit.*``) and its
    config as a dict (``config.json``, ``TransfoXLConfig.to_dict()``); ``symbols``: its vocabulary
    in id order."""
    _check_architecture(cfg.get("attn_type", 0), cfg.get("sample_softmax", -1), cfg.get("adaptive", True))
    n_layer, div_val = cfg["n_layer"], cfg["div_val"]
    d_model, d_embed = cfg["d_model"], cfg.get("d_embed", cfg["d_model"])
    n_clusters = len(cfg["cutoffs"]) + 1
    untie_r = cfg.get("untie_r", True)
    options = _model_options(n_layer, d_model, cfg["n_head"], cfg["d_head"], cfg["d_inner"], d_embed,
                             div_val, cfg["cutoffs"], cfg.get("mem_len", 0) or 0,
                             cfg.get("clamp_len", -1), cfg.get("same_length", False),
                             cfg.get("pre_lnorm", False), cfg.get("dropout", 0.1),
                             cfg.get("dropatt", 0.0), tie_r=not untie_r, same_length_mask="authors")
    tables = [state[f"transformer.word_emb.emb_layers.{i}.weight"]
              for i in range(1 if div_val == 1 else n_clusters)]
    embed_projs = _indexed(state, "transformer.word_emb.emb_projs.")
    out_projs = _indexed(state, "crit.out_projs.")  # absent entries: no projection
    return SourceModel(
        symbols=list(symbols), counts=counts, options=options, embed_tables=tables,
        embed_projs=[embed_projs[i] for i in sorted(embed_projs)],
        # save_pretrained may drop tied copies: those are the input tables
        out_weights=[state.get(f"crit.out_layers.{i}.weight", t) for i, t in enumerate(tables)],
        out_biases=[state[f"crit.out_layers.{i}.bias"] for i in range(len(tables))],
        out_projs=[out_projs.get(i) for i in range(n_clusters)],
        cluster_weight=state.get("crit.cluster_weight"), cluster_bias=state.get("crit.cluster_bias"),
        layers=[_layer_from(state, f"transformer.layers.{l}.", untie_r) for l in range(n_layer)],
        r_w_bias=None if untie_r else state["transformer.r_w_bias"],
        r_r_bias=None if untie_r else state["transformer.r_r_bias"],
        tokens_per_sample=int(cfg.get("tgt_len") or 128),
    )


def read_nvidia(checkpoint: str, vocab: Optional[str] = None, trust_pickle: bool = False
                ) -> SourceModel:
    """NVIDIA DeepLearningExamples' ``checkpoint_*.pt`` (``model_config``, ``model_state``,
    ``vocab``: Python objects, so ``trust_pickle`` is needed), vocabulary from the checkpoint
    unless ``vocab`` names a text file (one symbol per line, in id order)."""
    ckpt = load_torch(checkpoint, trust_pickle)
    if not isinstance(ckpt, dict) or "model_state" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"{checkpoint} is not an NVIDIA Transformer-XL checkpoint "
                         "(no model_state/model_config)")
    cfg = dict(ckpt["model_config"])
    state = {k[len("module."):] if k.startswith("module.") else k: v
             for k, v in ckpt["model_state"].items()}
    if vocab is not None:
        symbols, counts = read_vocab_text(vocab)
    elif ckpt.get("vocab") is not None:
        symbols, counts = vocab_from_object(ckpt["vocab"])
    else:
        raise ValueError(f"{checkpoint} holds no vocabulary: pass it with --vocab")
    _check_architecture(cfg.get("attn_type", 0), cfg.get("sample_softmax", -1))
    n_layer, div_val = cfg["n_layer"], cfg.get("div_val", 1)
    d_model = cfg["d_model"]
    d_embed = cfg.get("d_embed") or d_model
    cutoffs = list(cfg.get("cutoffs", []))
    n_clusters = len(cutoffs) + 1
    tie_projs = list(cfg.get("tie_projs", [False] * n_clusters))
    options = _model_options(n_layer, d_model, cfg["n_head"], cfg["d_head"], cfg["d_inner"], d_embed,
                             div_val, cutoffs, cfg.get("mem_len") or 0, cfg.get("clamp_len", -1),
                             cfg.get("same_length", False), cfg.get("pre_lnorm", False),
                             cfg.get("dropout", 0.1), cfg.get("dropatt", 0.0), tie_r=True,
                             same_length_mask="nvidia")
    tables = [state[f"word_emb.emb_layers.{i}.weight"] for i in range(1 if div_val == 1 else n_clusters)]
    embed_projs = [state[f"word_emb.emb_projs.{i}"] for i in sorted(_indexed(state, "word_emb.emb_projs."))]
    own_out_w = _indexed(state, "crit.out_layers_weights.")
    out_w = [own_out_w.get(i, tables[i]) for i in range(len(tables))]  # absent when tie_weight
    out_b = [state[f"crit.out_layers_biases.{i}"] for i in range(len(tables))]
    own_projs = _indexed(state, "crit.out_projs.")
    out_projs: List[Optional[Tensor]] = []
    for i in range(n_clusters):
        if div_val == 1 and d_embed == d_model:
            out_projs.append(None)
        elif tie_projs[i]:  # the shared (input) projection: the only one with div_val 1
            out_projs.append(embed_projs[0] if div_val == 1 else embed_projs[i])
        else:
            out_projs.append(own_projs[i])
    cw, cb = state.get("crit.cluster_weight"), state.get("crit.cluster_bias")
    return SourceModel(
        symbols=symbols, counts=counts, options=options, embed_tables=tables,
        embed_projs=embed_projs, out_weights=out_w, out_biases=out_b, out_projs=out_projs,
        # NVIDIA reads tail cluster i's head entry from column -i: its rows are in reverse order.
        cluster_weight=None if cw is None else cw.flip(0),
        cluster_bias=None if cb is None else cb.flip(0),
        layers=[_layer_from(state, f"layers.{l}.", False) for l in range(n_layer)],
        r_w_bias=state["r_w_bias"], r_r_bias=state["r_r_bias"],
        tokens_per_sample=int(cfg.get("tgt_len") or 128),
    )


# ----------------------------------------------------------------------------- vocabulary map
@dataclass
class VocabularyMap:
    """``source_id[new_id]`` (-1: no source symbol), the dictionary's words after the 4 specials,
    and the cutoffs in new ids."""

    source_id: List[int]
    words: List[str]
    counts: List[int]
    cutoffs: List[int]


def map_vocabulary(symbols: List[str], cutoffs: List[int], counts: Optional[List[int]] = None,
                   eos_symbol: str = "<eos>", unk_symbol: str = "<unk>") -> VocabularyMap:
    """See the module docstring: source eos/unk -> fairseq </s>/<unk>, the rest in order from 4."""
    if len(set(symbols)) != len(symbols):
        raise ValueError("the source vocabulary has duplicate symbols; it cannot be a fairseq dictionary")
    head_end = cutoffs[0] if cutoffs else len(symbols)
    special_ids = {}
    for fairseq_id, sym in ((2, eos_symbol), (3, unk_symbol)):
        if sym in symbols:
            idx = symbols.index(sym)
            if idx >= head_end:
                raise ValueError(
                    f"the source's {sym!r} (id {idx}) is in a tail cluster (head ends at {head_end}); "
                    "mapping it onto fairseq's special would change the clusters: name another symbol "
                    "with --eos-symbol/--unk-symbol or convert with none ('')"
                )
            special_ids[fairseq_id] = idx
        else:
            logger.warning(f"the source vocabulary has no {sym!r}: fairseq's "
                           f"{'</s>' if fairseq_id == 2 else '<unk>'} gets probability 0 "
                           "(prepare data that never needs it)")
    for reserved in ("<s>", "<pad>", "</s>", "<unk>"):
        if reserved in symbols and reserved not in (eos_symbol, unk_symbol):
            raise ValueError(f"the source vocabulary holds {reserved!r}, one of fairseq's special "
                             "symbols; map it with --eos-symbol/--unk-symbol")
    mapped = set(special_ids.values())
    source_id = [-1, -1, special_ids.get(2, -1), special_ids.get(3, -1)]
    words, word_counts = [], []
    for idx, sym in enumerate(symbols):
        if idx in mapped:
            continue
        source_id.append(idx)
        words.append(sym)
        word_counts.append(counts[idx] if counts else len(symbols) - idx)
    shift = FAIRSEQ_SPECIALS - len(mapped)
    return VocabularyMap(source_id, words, word_counts, [c + shift for c in cutoffs])


def fairseq_vocabulary(symbols: List[str], cutoffs: List[int],
                       counts: Optional[List[int]] = None) -> VocabularyMap:
    """The identity map of a source whose vocabulary already is a fairseq dictionary (``symbols``:
    ``Dictionary.symbols``, ids 0-3 the specials), as fairseq's own examples/truncated_bptt models."""
    if list(symbols[:FAIRSEQ_SPECIALS]) != ["<s>", "<pad>", "</s>", "<unk>"]:
        raise ValueError(f"the source vocabulary starts with {list(symbols[:FAIRSEQ_SPECIALS])}, not "
                         "fairseq's <s> <pad> </s> <unk>: map it with map_vocabulary instead")
    n = len(symbols)
    word_counts = counts[FAIRSEQ_SPECIALS:] if counts else [n - i for i in range(FAIRSEQ_SPECIALS, n)]
    return VocabularyMap(list(range(n)), list(symbols[FAIRSEQ_SPECIALS:]), list(word_counts), list(cutoffs))


# ----------------------------------------------------------------------------- conversion
def _rows(table: Tensor, source_rows: List[int], fill: float = 0.0) -> Tensor:
    """``out[r] = table[source_rows[r]]``, or ``fill`` where ``source_rows[r] < 0``."""
    index = torch.tensor(source_rows, dtype=torch.long)
    out = table.new_full((len(source_rows),) + tuple(table.shape[1:]), fill)
    valid = index >= 0
    out[valid] = table.index_select(0, index[valid])
    return out


def fairseq_state(src: SourceModel, vmap: VocabularyMap) -> Tuple[Dict[str, Tensor], Dict[str, object]]:
    """Our ``state_dict`` (decoder.*) and model options for ``src`` under ``vmap``."""
    opts = dict(src.options)
    n_new = len(vmap.source_id)
    bounds = [0] + vmap.cutoffs + [n_new]
    src_bounds = [0] + list(src.options["cutoffs"]) + [len(src.symbols)]

    def cluster_rows(c):  # source row (relative to the source cluster) of each new id of cluster c
        return [s - src_bounds[c] if s >= 0 else -1 for s in vmap.source_id[bounds[c]:bounds[c + 1]]]

    if opts["div_val"] == 1:
        tables = [_rows(src.embed_tables[0], vmap.source_id)]
        out_w = [_rows(src.out_weights[0], vmap.source_id)]
        out_b = [_rows(src.out_biases[0], vmap.source_id, DEAD_LOGIT)]
    else:
        groups = range(len(src.embed_tables))
        tables = [_rows(src.embed_tables[c], cluster_rows(c)) for c in groups]
        out_w = [_rows(src.out_weights[c], cluster_rows(c)) for c in groups]
        out_b = [_rows(src.out_biases[c], cluster_rows(c), DEAD_LOGIT) for c in groups]

    sd: Dict[str, Tensor] = {}
    for i, t in enumerate(tables):
        sd[f"decoder.embed.emb_layers.{i}.weight"] = t
        sd[f"decoder.softmax.out_layers.{i}.weight"] = out_w[i]
        sd[f"decoder.softmax.out_layers.{i}.bias"] = out_b[i]
    for i, p in enumerate(src.embed_projs):
        sd[f"decoder.embed.emb_projs.{i}"] = p
    for i, p in enumerate(src.out_projs):
        if p is not None:
            sd[f"decoder.softmax.out_projs.{i}"] = p
    if src.cluster_weight is not None and len(vmap.cutoffs) > 0:
        sd["decoder.softmax.cluster_weight"] = src.cluster_weight
        sd["decoder.softmax.cluster_bias"] = src.cluster_bias
    for l, layer in enumerate(src.layers):
        for name, value in layer.items():
            sd[f"decoder.layers.{l}.{name}"] = value
    if src.r_w_bias is not None:
        sd["decoder.r_w_bias"], sd["decoder.r_r_bias"] = src.r_w_bias, src.r_r_bias

    # Tie exactly where the source's values are equal (then tying changes nothing).
    opts["untie_weight"] = not all(torch.equal(a, b) for a, b in zip(out_w, tables))
    projs = [p for p in src.out_projs[1:]]
    tied_proj = [src.embed_projs[0] if opts["div_val"] == 1 else src.embed_projs[i + 1]
                 for i in range(len(projs))] if src.embed_projs else [None] * len(projs)
    opts["untie_projs"] = not all(
        (p is None and q is None) or (p is not None and q is not None and torch.equal(p, q))
        for p, q in zip(projs, tied_proj))
    opts["cutoffs"] = vmap.cutoffs
    return {k: v.float().contiguous() for k, v in sd.items()}, opts


def model_arguments(opts: Dict[str, object], n_token: int) -> List[str]:
    """fairseq-train style options building our model with ``opts``."""
    args = []
    for name in ("n_layer", "d_model", "n_head", "d_head", "d_inner", "d_embed", "div_val",
                 "mem_len", "clamp_len", "dropout", "dropatt"):
        args += [f"--{name.replace('_', '-')}", str(opts[name])]
    cutoffs = opts["cutoffs"] or [n_token]  # none: one >= the vocabulary is dropped by the model
    args += ["--cutoffs", ",".join(str(c) for c in cutoffs)]
    args += ["--same-length-mask", opts.get("same_length_mask", "authors")]
    for flag in ("same_length", "pre_lnorm", "tie_r", "untie_weight", "untie_projs"):
        if opts[flag]:
            args.append(f"--{flag.replace('_', '-')}")
    return args


def convert(src: SourceModel, out_dir: str, eos_symbol: str = "<eos>", unk_symbol: str = "<unk>",
            checkpoint_name: str = "model.pt"):
    """Write ``out_dir/dict.txt`` and ``out_dir/<checkpoint_name>``; returns ``(model, path)``."""
    from truncated_bptt.fairseq_checkpoint import build_model, save_checkpoint

    vmap = map_vocabulary(src.symbols, list(src.options["cutoffs"]), src.counts, eos_symbol, unk_symbol)
    state, opts = fairseq_state(src, vmap)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "dict.txt"), "w", encoding="utf-8") as f:
        for word, count in zip(vmap.words, vmap.counts):
            f.write(f"{word} {count}\n")
    model, _, cfg = build_model(out_dir, model_arguments(opts, len(vmap.source_id)),
                                task_args=["--tokens-per-sample", str(src.tokens_per_sample)])
    if len(model.decoder.dictionary) != len(vmap.source_id):
        raise ValueError(f"dict.txt reads back as {len(model.decoder.dictionary)} symbols instead of "
                         f"{len(vmap.source_id)}: a source symbol is not a valid fairseq word")
    model.load_state_dict(state, strict=True)
    path = os.path.join(out_dir, checkpoint_name)
    save_checkpoint(model, cfg, path)
    logger.info("wrote %s and %s (%d symbols, cutoffs %s)", path, os.path.join(out_dir, "dict.txt"),
                len(vmap.source_id), vmap.cutoffs)
    return model, path
