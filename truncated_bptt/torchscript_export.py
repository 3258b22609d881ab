"""Self-contained TorchScript scorer for a trained ``transformer_xl`` (the NVIDIA-style inference path).

:func:`export_scorer` copies a decoder's weights into :class:`TransformerXLScorer`, a compact
inference-only re-statement of the model written for ``torch.jit.script``, and saves it with
``torch.jit.save``. The artefact loads with ``torch.jit.load`` alone: no fairseq, no plugin.

Why ``torch.jit.script`` and not ``torch.export``: scoring a stream needs a memory whose length
changes (empty at the first segment, then up to ``mem_len``), any segment length (1 for streaming
token by token), and the adaptive softmax computes each tail cluster only for the rows whose target
falls in it (data-dependent shapes, which is what keeps scoring free of ``B x T x V`` logits).
Scripting keeps this control flow as it is; ``torch.export`` would need a fixed-shape redesign
(padded memory plus a validity mask, tail clusters over all rows). ``torch.jit.script`` is deprecated
in torch 2.13 but fully functional, and it is the format NVIDIA's Transformer-XL ships.

Usage of the artefact (tensors batch-first)::

    scorer = torch.jit.load("model.ts")
    mems = []                                     # empty memory at the start of a stream
    for tokens, targets in segments:              # LongTensor [B, T] each
        log_probs, mems = scorer(tokens, targets, mems)   # fp32 [B, T], n_layer x [B, M, d]
    scorer.symbols                                # the dictionary (index -> symbol)
"""
import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

def _buffer(module: nn.Module, name: str, value: Optional[Tensor]) -> None:
    """Register a detached copy (an empty tensor stands for "absent")."""
    module.register_buffer(name, value.detach().clone() if value is not None else torch.empty(0))


class EmbeddingCluster(nn.Module):
    """Token ids ``[lo, hi)`` -> ``table[id - lo] @ proj.T`` (``[N, d_model]``)."""

    def __init__(self, table: Tensor, proj: Optional[Tensor], lo: int, hi: int):
        super().__init__()
        _buffer(self, "table", table)
        _buffer(self, "proj", proj)
        self.has_proj = proj is not None
        self.lo, self.hi = lo, hi

    def forward(self, ids: Tensor) -> Tensor:
        emb = F.embedding(ids - self.lo, self.table)
        return F.linear(emb, self.proj) if self.has_proj else emb


class SoftmaxCluster(nn.Module):
    """Logits of one adaptive-softmax cluster: ``(h @ proj) W.T + b`` in fp32; the head's ``W``/``b``
    include one row per tail cluster (after its tokens, in cluster order)."""

    def __init__(self, weight: Tensor, bias: Tensor, proj: Optional[Tensor], lo: int, hi: int):
        super().__init__()
        _buffer(self, "weight", weight)
        _buffer(self, "bias", bias)
        _buffer(self, "proj", proj)
        self.has_proj = proj is not None
        self.lo, self.hi = lo, hi

    def forward(self, hidden: Tensor) -> Tensor:
        if self.has_proj:
            hidden = torch.matmul(hidden, self.proj)
        return F.linear(hidden, self.weight, self.bias).float()


class ScorerLayer(nn.Module):
    """One Transformer-XL layer: relative attention over ``[memory; segment]``, then feed-forward."""

    def __init__(self, layer, r_w_bias: Tensor, r_r_bias: Tensor):
        super().__init__()
        attn, ff = layer.attn, layer.ff
        self.n_head, self.d_head, self.pre_lnorm = attn.n_head, attn.d_head, attn.pre_lnorm
        self.scale = 1.0 / math.sqrt(attn.d_head)
        self.eps = attn.layer_norm.eps
        for name, value in [
            ("qkv", attn.qkv_net.weight), ("r_net", attn.r_net.weight), ("o_net", attn.o_net.weight),
            ("attn_ln_w", attn.layer_norm.weight), ("attn_ln_b", attn.layer_norm.bias),
            ("fc1_w", ff.fc1.weight), ("fc1_b", ff.fc1.bias), ("fc2_w", ff.fc2.weight),
            ("fc2_b", ff.fc2.bias), ("ff_ln_w", ff.layer_norm.weight), ("ff_ln_b", ff.layer_norm.bias),
            ("r_w_bias", r_w_bias), ("r_r_bias", r_r_bias),
        ]:
            _buffer(self, name, value)

    def forward(self, h: Tensor, mem: Optional[Tensor], pos_emb: Tensor, mask: Tensor) -> Tensor:
        """h ``[B, T, d]``, mem ``[B, M, d]`` or None, pos_emb ``[K, d]`` (distances ``K-1 .. 0``),
        mask bool ``[T, K]`` (True = hidden). Returns ``[B, T, d]``."""
        bsz, qlen, d_model = h.shape
        n_head, d_head = self.n_head, self.d_head
        x = torch.cat([mem, h], dim=1) if mem is not None else h
        klen = x.size(1)
        if self.pre_lnorm:
            x = F.layer_norm(x, [d_model], self.attn_ln_w, self.attn_ln_b, self.eps)
        qkv = F.linear(x, self.qkv).view(bsz, klen, 3, n_head, d_head)
        q = qkv[:, klen - qlen:, 0]                      # queries of the segment [B, T, H, Dh]
        k, v = qkv[:, :, 1], qkv[:, :, 2]                # keys/values of all positions [B, K, H, Dh]
        r = F.linear(pos_emb, self.r_net).view(klen, n_head, d_head)
        # content score (q + u).k_j and position score (q + v).R_c for encoding row c ...
        content = torch.einsum("bihd,bjhd->bhij", (q + self.r_w_bias) * self.scale, k)
        position = torch.einsum("bihd,chd->bhic", (q + self.r_r_bias) * self.scale, r)
        # ... aligned to keys: query i (key position M + i) and key j are M + i - j apart, encoded
        # in row c = K - 1 - (M + i - j) = T - 1 - i + j (clamped where the key is masked anyway).
        i = torch.arange(qlen, device=h.device).unsqueeze(1)
        j = torch.arange(klen, device=h.device).unsqueeze(0)
        rows = (qlen - 1 - i + j).clamp(max=klen - 1).expand(qlen, klen)
        position = position.gather(3, rows.expand(bsz, n_head, qlen, klen))
        # masked scores: a finite -1e30 as the model (softmax in fp32 makes them exactly 0)
        score = (content + position).float().masked_fill(mask, -1e30)
        prob = torch.softmax(score, dim=-1).to(v.dtype)
        attn = torch.einsum("bhij,bjhd->bihd", prob, v).reshape(bsz, qlen, n_head * d_head)
        out = F.linear(attn, self.o_net)
        if self.pre_lnorm:
            h = h + out
            y = F.layer_norm(h, [d_model], self.ff_ln_w, self.ff_ln_b, self.eps)
            return h + F.linear(F.relu(F.linear(y, self.fc1_w, self.fc1_b)), self.fc2_w, self.fc2_b)
        h = F.layer_norm(h + out, [d_model], self.attn_ln_w, self.attn_ln_b, self.eps)
        y = F.linear(F.relu(F.linear(h, self.fc1_w, self.fc1_b)), self.fc2_w, self.fc2_b)
        return F.layer_norm(h + y, [d_model], self.ff_ln_w, self.ff_ln_b, self.eps)


def softmax_cluster_params(softmax) -> List[Tuple[Tensor, Tensor, Optional[Tensor]]]:
    """(weight, bias, projection or None) of each cluster of a ProjectedAdaptiveSoftmax; the head's
    weight/bias get one row per tail cluster appended (in cluster order), as the scorer expects."""
    params = softmax._cluster_params()
    if softmax.n_clusters > 0:
        weight, bias, proj = params[0]
        params[0] = (torch.cat([weight, softmax.cluster_weight]), torch.cat([bias, softmax.cluster_bias]), proj)
    return params


class TransformerXLScorer(nn.Module):
    """Scores token streams segment by segment with memory; see the module docstring."""

    def __init__(self, decoder, symbols: List[str]):
        super().__init__()
        cfg = decoder.cfg
        self.d_model = cfg.d_model
        self.mem_len, self.clamp_len, self.same_length = cfg.mem_len, cfg.clamp_len, cfg.same_length
        self.symbols: List[str] = list(symbols)
        self.pad, self.eos = decoder.dictionary.pad(), decoder.dictionary.eos()
        embed, softmax = decoder.embed, decoder.softmax
        self.emb_scale = float(embed.emb_scale)
        bounds = embed.bounds
        if embed.div_val == 1:
            proj = embed.emb_projs[0] if len(embed.emb_projs) > 0 else None
            clusters = [EmbeddingCluster(embed.emb_layers[0].weight, proj, 0, bounds[-1])]
        else:
            clusters = [EmbeddingCluster(layer.weight, embed.emb_projs[i], bounds[i], bounds[i + 1])
                        for i, layer in enumerate(embed.emb_layers)]
        self.embed_clusters = nn.ModuleList(clusters)
        self.layers = nn.ModuleList(
            ScorerLayer(layer, layer.r_w_bias if layer.r_w_bias is not None else decoder.r_w_bias,
                        layer.r_r_bias if layer.r_r_bias is not None else decoder.r_r_bias)
            for layer in decoder.layers
        )
        self.shortlist = softmax.shortlist
        self.tail_starts: List[int] = list(softmax.bounds[1:-1])
        self.softmax_clusters = nn.ModuleList(
            SoftmaxCluster(w, b, p, softmax.bounds[i], softmax.bounds[i + 1])
            for i, (w, b, p) in enumerate(softmax_cluster_params(softmax))
        )

    def embed(self, tokens: Tensor) -> Tensor:
        """``[B, T]`` -> ``[B, T, d_model]`` (adaptive input, scaled by ``sqrt(d_model)``)."""
        flat = tokens.reshape(-1)
        out = torch.zeros(flat.numel(), self.d_model, dtype=self.layers[0].qkv.dtype,
                          device=tokens.device)
        for cluster in self.embed_clusters:
            idx = ((flat >= cluster.lo) & (flat < cluster.hi)).nonzero().squeeze(1)
            if idx.numel() > 0:
                out = out.index_copy(0, idx, cluster(flat.index_select(0, idx)).to(out.dtype))
        return (out * self.emb_scale).view(tokens.size(0), tokens.size(1), self.d_model)

    def position_encodings(self, klen: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Sinusoids ``[klen, d_model]`` of the distances ``klen-1, ..., 0`` (clamped at clamp_len)."""
        dist = torch.arange(klen - 1, -1, -1, device=device, dtype=torch.float32)
        if self.clamp_len > 0:
            dist = dist.clamp(max=float(self.clamp_len))
        inv_freq = 1.0 / (10000 ** (torch.arange(0.0, float(self.d_model), 2.0, device=device)
                                    / self.d_model))
        angles = torch.outer(dist, inv_freq)
        return torch.cat([angles.sin(), angles.cos()], dim=-1).to(dtype)

    @torch.jit.export
    def features(self, tokens: Tensor, mems: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """tokens ``[B, T]``, mems ``n_layer x [B, M, d]`` (``[]`` = none) -> features
        ``[B, T, d]`` and the new memory (last ``mem_len`` inputs of each layer; ``[]`` if 0)."""
        h = self.embed(tokens)
        qlen = tokens.size(1)
        mlen = mems[0].size(1) if len(mems) > 0 else 0
        klen = mlen + qlen
        pos = torch.arange(mlen, klen, device=h.device).unsqueeze(1)
        key = torch.arange(klen, device=h.device).unsqueeze(0)
        mask = key > pos
        if self.same_length:
            mask = mask | (pos - key >= self.mem_len)
        pos_emb = self.position_encodings(klen, h.device, h.dtype)
        new_mems: List[Tensor] = []
        for i, layer in enumerate(self.layers):
            mem: Optional[Tensor] = None
            if len(mems) > 0:
                mem = mems[i].to(h.dtype)
            if self.mem_len > 0:
                cat = torch.cat([mem, h], dim=1) if mem is not None else h
                new_mems.append(cat[:, max(0, cat.size(1) - self.mem_len):].contiguous())
            h = layer(h, mem, pos_emb, mask)
        return h, new_mems

    @torch.jit.export
    def target_log_probs(self, features: Tensor, targets: Tensor) -> Tensor:
        """features ``[B, T, d]``, targets ``[B, T]`` -> fp32 ``[B, T]`` log p(target); computes the
        head for every row and a tail cluster only for the rows whose target is in it."""
        hidden = features.reshape(-1, features.size(-1))
        target = targets.reshape(-1)
        head = self.softmax_clusters[0]
        head_lp = torch.log_softmax(head(hidden), dim=-1)
        cluster = torch.zeros_like(target)
        for start in self.tail_starts:
            cluster = cluster + (target >= start).long()
        head_class = torch.where(cluster == 0, target, self.shortlist - 1 + cluster)
        out = head_lp.gather(1, head_class.clamp(min=0).unsqueeze(1)).squeeze(1)
        for c, tail in enumerate(self.softmax_clusters):
            idx = (cluster == c).nonzero().squeeze(1)
            if c > 0 and idx.numel() > 0:
                tail_lp = torch.log_softmax(tail(hidden.index_select(0, idx)), dim=-1)
                word = (target.index_select(0, idx) - tail.lo).unsqueeze(1)
                out = out.index_add(0, idx, tail_lp.gather(1, word).squeeze(1))
        return out.view(targets.shape)

    @torch.jit.export
    def next_token_log_probs(self, features: Tensor) -> Tensor:
        """features ``[N, d]`` -> fp32 ``[N, V]`` full log-probabilities (for a few rows only)."""
        head_lp = torch.log_softmax(self.softmax_clusters[0](features), dim=-1)
        parts = [head_lp[:, : self.shortlist]]
        for c, tail in enumerate(self.softmax_clusters):
            if c > 0:
                parts.append(head_lp[:, self.shortlist - 1 + c].unsqueeze(1)
                             + torch.log_softmax(tail(features), dim=-1))
        return torch.cat(parts, dim=1)

    def forward(self, tokens: Tensor, targets: Tensor, mems: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """Score one segment: tokens/targets ``[B, T]`` (targets = next tokens), mems as
        :meth:`features` -> (fp32 log p(targets) ``[B, T]``, new memory)."""
        features, new_mems = self.features(tokens, mems)
        return self.target_log_probs(features, targets), new_mems


def export_scorer(model, path: str, dtype: torch.dtype = torch.float32) -> torch.jit.ScriptModule:
    """Script a scorer of ``model`` (a TransformerXLLanguageModel, with its current mem_len /
    clamp_len / same_length), cast it to ``dtype`` and save it to ``path``."""
    decoder = model.decoder
    scorer = TransformerXLScorer(decoder, list(decoder.dictionary.symbols)).to(dtype).eval()
    scripted = torch.jit.script(scorer)
    torch.jit.save(scripted, path)
    return scripted
