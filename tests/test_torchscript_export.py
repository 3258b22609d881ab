"""TorchScript export: the scripted scorer, loaded in a process where fairseq and the plugin cannot be
imported, gives the eager model's log-probs over consecutive segments with memory."""
import json
import subprocess
import sys

import pytest
import torch

from fairseq_commands import ROOT, cli_env
from inference_models import stream_segments, tiny_checkpoint, tiny_model
from truncated_bptt import export_cli
from truncated_bptt.torchscript_export import TransformerXLScorer, export_scorer

# Runs with `python -I` (no PYTHONPATH, no cwd on sys.path) and refuses fairseq / the plugin.
LOAD_WITHOUT_FAIRSEQ = r"""
import importlib.abc, json, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("fairseq", "fairseq_cli", "truncated_bptt", "omegaconf", "hydra"):
            raise ImportError("blocked for this test: " + name)
sys.meta_path.insert(0, Refuse())
import torch
scorer = torch.jit.load(sys.argv[1])
stream = torch.tensor(json.loads(sys.argv[2]))
seg = int(sys.argv[3])
mems, out = [], []
for start in range(0, stream.size(1) - 1, seg):
    tokens, targets = stream[:, start:start + seg], stream[:, start + 1:start + seg + 1]
    tokens = tokens[:, :targets.size(1)]
    log_probs, mems = scorer(tokens, targets, mems)
    out.append(log_probs.tolist())
mods = [m for m in sys.modules if m.split(".")[0] in ("fairseq", "truncated_bptt")]
print(json.dumps({"log_probs": out, "mem_shape": list(mems[0].shape), "symbols": scorer.symbols[:6],
                  "foreign_modules": mods}))
"""

# Every softmax shape the model builds (the dictionary has 44 symbols; cutoffs 20,30 by default).
CONFIGS = {
    "post_norm": ["--mem-len", "5"],
    "div_val_pre_norm_same_length": ["--mem-len", "4", "--div-val", "2", "--d-embed", "12",
                                     "--pre-lnorm", "--same-length", "--clamp-len", "3", "--tie-r"],
    "no_tail_clusters": ["--mem-len", "5", "--cutoffs", "2000,10000"],  # as the quickstart's model
    "d_embed_projected_div_val_1_nvidia_same_length": ["--mem-len", "5", "--d-embed", "12",
                                                       "--same-length", "--same-length-mask", "nvidia"],
    "one_tail_cluster_untied": ["--mem-len", "3", "--cutoffs", "25", "--untie-weight",
                                "--untie-projs", "--div-val", "2"],
    "sdpa_attention": ["--mem-len", "5", "--attention", "sdpa", "--same-length"],
}


def sharpen(model):
    """Large random weights, so attention and softmax are far from uniform (a real test)."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def eager_segments(model, stream, seg):
    """Reference: the fairseq model streaming the same segments with its own memory."""
    return stream_segments(model, stream, seg, memory_key="test")


def run_isolated(path, stream, seg):
    proc = subprocess.run(
        [sys.executable, "-I", "-c", LOAD_WITHOUT_FAIRSEQ, path, json.dumps(stream.tolist()), str(seg)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
        env=cli_env(PYTHONPATH=""), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_scripted_scorer_without_fairseq_equals_eager_model(dictionary_dir, tmp_path, config):
    model = sharpen(tiny_model(dictionary_dir, *CONFIGS[config])[0])
    path = str(tmp_path / "model.ts")
    export_scorer(model, path)
    torch.manual_seed(1)
    stream = torch.randint(0, len(model.decoder.dictionary), (2, 20))  # 19 targets, last segment short
    result = run_isolated(path, stream, seg=6)
    assert result["foreign_modules"] == []
    assert result["symbols"] == model.decoder.dictionary.symbols[:6]
    reference = eager_segments(model, stream, seg=6)
    assert len(result["log_probs"]) == len(reference) == 4
    assert torch.cat(reference, dim=1).std() > 0.5  # far from a uniform model
    for got, want in zip(result["log_probs"], reference):
        assert torch.allclose(torch.tensor(got), want, atol=1e-5, rtol=1e-5)
    assert result["mem_shape"] == [2, model.decoder.memory_options.mem_len, model.decoder.cfg.d_model]
    assert torch.jit.load(path).same_length_mask == model.decoder.memory_options.same_length_mask


def test_scorer_streams_one_token_at_a_time_and_in_bfloat16(dictionary_dir):
    model = sharpen(tiny_model(dictionary_dir, "--mem-len", "30")[0])
    scorer = torch.jit.script(TransformerXLScorer(
        model.decoder, model.decoder.dictionary.symbols))
    stream = torch.randint(4, len(model.decoder.dictionary), (1, 9))
    whole, _ = scorer(stream[:, :-1], stream[:, 1:], [])
    mems, steps = [], []
    for t in range(8):
        lp, mems = scorer(stream[:, t:t + 1], stream[:, t + 1:t + 2], mems)
        steps.append(lp)
    assert torch.allclose(torch.cat(steps, dim=1), whole, atol=1e-5)
    full = scorer.next_token_log_probs(scorer.features(stream[:, :1], [])[0][0])
    assert torch.allclose(full.exp().sum(-1), torch.ones(1), atol=1e-5)
    assert torch.allclose(full[0, stream[0, 1]], whole[0, 0], atol=1e-5)
    half = torch.jit.script(TransformerXLScorer(
        model.decoder, model.decoder.dictionary.symbols).to(torch.bfloat16))
    lp_bf16, _ = half(stream[:, :-1], stream[:, 1:], [])
    assert lp_bf16.dtype == torch.float32
    assert (lp_bf16 - whole).abs().max() < 0.1 * whole.abs().max()


def test_export_cli(dictionary_dir, tmp_path):
    ckpt = str(tmp_path / "ckpt.pt")
    model = tiny_checkpoint(dictionary_dir, ckpt, "--mem-len", "4")[0]
    out = str(tmp_path / "model.ts")
    proc = subprocess.run(
        [sys.executable, "-m", "truncated_bptt.export_cli", ckpt, out, "--data", dictionary_dir,
         "--mem-len", "7"], cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    scorer = torch.jit.load(out)
    assert scorer.mem_len == 7
    stream = torch.randint(4, 44, (1, 12))
    model.decoder.set_memory_options(mem_len=7)
    got, _ = scorer(stream[:, :-1], stream[:, 1:], [])
    assert torch.allclose(got, eager_segments(model, stream, seg=11)[0], atol=1e-5)

    with pytest.raises(SystemExit, match="--data .* has no dict.txt: pass the model's data dir"):
        export_cli.main([ckpt, out, "--data", str(tmp_path / "nowhere")])
