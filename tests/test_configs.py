"""The hydra recipes in configs/: published values, presets, and real fairseq-hydra-train runs.

Each recipe is composed by the real ``fairseq-hydra-train`` of the interpreter running the tests
(fairseq 0.12.2 / hydra 1.0 or fairseq-fixed / hydra 1.3) and trains two updates on a tiny corpus,
with only the model shrunk (and the data, paths and device overridden): optimizer, scheduler,
criterion, task, precision flags and clipping are the recipe's own.
"""
import argparse
import math
import os
import re

import pytest
from omegaconf import OmegaConf

from examples.fairseq_logs import parse_training_log
from fairseq_commands import ROOT, USER_DIR, run

CONFIGS = os.path.join(ROOT, "configs")

# What each recipe must say, from the sources it reproduces (see docs/recipes.md):
# peak lr, floor, warmup, updates, segment, memory, sequences per update on the GPUs it targets.
SPEC = {
    "wt103_base": dict(optimizer="nvidia_lamb", scheduler="cosine_warmup", lr=0.01, floor=0.001,
                       warmup=1000, max_update=40000, tokens=192, mem_len=192, gpus=8, batch=256),
    "wt103_large": dict(optimizer="nvidia_lamb", scheduler="cosine_warmup", lr=0.01, floor=0.0001,
                        warmup=16000, max_update=100000, tokens=384, mem_len=384, gpus=8, batch=128),
    "wt103_large_multinode": dict(optimizer="nvidia_lamb", scheduler="cosine_warmup", lr=0.02,
                                  floor=0.0002, warmup=16000, max_update=25000, tokens=384,
                                  mem_len=384, gpus=32, batch=512),
    "paper_base": dict(optimizer="adam", scheduler="cosine", lr=0.00025, floor=0.0, warmup=0,
                       max_update=200000, tokens=150, mem_len=150, gpus=4, batch=60),
    "tiny_cpu": dict(optimizer="adam", scheduler="cosine_warmup", lr=0.003, floor=0.0003,
                     warmup=100, max_update=1200, tokens=64, mem_len=128, gpus=1, batch=16),
    # What the memory buys on real text (examples/wikitext2/run.sh, BENCHMARKS.md).
    "wikitext2_cpu": dict(optimizer="adam", scheduler="cosine_warmup", lr=0.001, floor=0.0001,
                          warmup=200, max_update=2000, tokens=128, mem_len=128, gpus=1, batch=8),
    # Your own data (docs/data.md): the authors' character-level base, NVIDIA's base on pieces.
    "enwik8_base": dict(optimizer="adam", scheduler="cosine_warmup", lr=0.00025, floor=0.0,
                        warmup=0, max_update=400000, tokens=512, mem_len=512, gpus=1, batch=22),
    "text8_base": dict(optimizer="adam", scheduler="cosine_warmup", lr=0.00025, floor=0.000001,
                       warmup=0, max_update=400000, tokens=512, mem_len=512, gpus=4, batch=24),
    "subword_base": dict(optimizer="nvidia_lamb", scheduler="cosine_warmup", lr=0.01, floor=0.001,
                         warmup=1000, max_update=40000, tokens=192, mem_len=192, gpus=8, batch=256),
}
PRESETS = {
    "wt103_base": "transformer_xl_wt103_base",
    "wt103_large": "transformer_xl_wt103_large",
    "wt103_large_multinode": "transformer_xl_wt103_large",
    "paper_base": "transformer_xl_paper_base",
}
# Published evaluation settings each recipe must document: tokens_per_sample, mem_len, clamp_len.
EVAL = {
    "wt103_base": ("64", "640", "400"),
    "paper_base": ("64", "640", "400"),
    "wt103_large": ("128", "1600", "1000"),
    "wt103_large_multinode": ("128", "1600", "1000"),
    "enwik8_base": ("80", "2100", "820"),
    "text8_base": ("80", "2100", "820"),
    "subword_base": ("64", "640", "400"),
}
KNOWN_PPL = {"wt103_base": "23.24", "wt103_large": "18.18", "wt103_large_multinode": "18.18",
             "paper_base": "23.70",
             # bits per character for the character-level recipes; none for new corpora
             "enwik8_base": "reports 1.06 bpc", "text8_base": "1.08 bpc",
             "subword_base": "no published result"}

SMALL_MODEL = ["model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.d_head=16",
               "model.d_inner=64", "model.mem_len=16", "task.tokens_per_sample=16",
               "dataset.batch_size=2"]


def load(name):
    return OmegaConf.load(os.path.join(CONFIGS, f"{name}.yaml"))


def test_every_recipe_is_specified():
    names = sorted(f[:-5] for f in os.listdir(CONFIGS) if f.endswith(".yaml"))
    assert names == sorted(SPEC)


@pytest.mark.parametrize("name", sorted(SPEC))
def test_recipe_values(name):
    cfg, spec = load(name), SPEC[name]
    assert cfg.task._name == "truncated_bptt_lm"
    assert OmegaConf.is_missing(cfg.task, "data")  # the user must say where the data is
    assert cfg.common.user_dir == "truncated_bptt"
    assert cfg.model._name == "transformer_xl"
    assert cfg.criterion._name == "adaptive_cross_entropy"
    assert cfg.optimizer._name == spec["optimizer"]
    assert cfg.lr_scheduler._name == spec["scheduler"]
    assert list(cfg.optimization.lr) == [spec["lr"]]
    floor = cfg.lr_scheduler.eta_min if spec["scheduler"] == "cosine_warmup" else cfg.lr_scheduler.min_lr
    assert floor == spec["floor"]
    assert cfg.lr_scheduler.warmup_updates == spec["warmup"]
    assert cfg.optimization.max_update == spec["max_update"]
    assert cfg.optimization.clip_norm == 0.25
    assert cfg.task.tokens_per_sample == spec["tokens"]
    assert cfg.model.mem_len == spec["mem_len"]
    per_update = cfg.dataset.batch_size * spec["gpus"] * cfg.optimization.update_freq[0]
    assert per_update == spec["batch"]
    if cfg.optimizer._name == "nvidia_lamb" and cfg.common.get("fp16", False):
        assert cfg.common.fp16_no_flatten_grads  # LAMB needs per-tensor master weights
    # Hydra writes into the run directory (".") and keeps its record beside the checkpoints.
    assert cfg.hydra.run.dir == "."


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_recipe_model_matches_preset(name):
    from truncated_bptt import transformer_xl_model

    preset = argparse.Namespace()
    getattr(transformer_xl_model, PRESETS[name])(preset)
    model = OmegaConf.to_container(load(name).model)
    for key, value in vars(preset).items():
        assert key in model, f"{name}.yaml does not set model.{key} (preset {PRESETS[name]})"
        expected = list(value) if isinstance(value, (list, tuple)) else value
        assert model[key] == expected, f"{name}.yaml model.{key}={model[key]}, preset {expected}"


@pytest.mark.parametrize("name", sorted(EVAL))
def test_recipe_documents_evaluation_and_known_perplexity(name):
    with open(os.path.join(CONFIGS, f"{name}.yaml"), encoding="utf-8") as f:
        text = f.read()
    tokens, mem_len, clamp_len = EVAL[name]
    assert f"--tokens-per-sample {tokens}" in text
    assert f"'mem_len': {mem_len}, 'clamp_len': {clamp_len}, 'same_length': True" in text
    assert KNOWN_PPL[name] in text


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, cycle_corpus):
    return cycle_corpus(str(tmp_path_factory.mktemp("recipes")),
                        {"train": (60, 0), "valid": (10, 1), "test": (10, 2)})


@pytest.mark.parametrize("name", sorted(SPEC))
def test_recipe_runs_with_fairseq_hydra_train(name, tiny_data, tmp_path):
    cfg, spec = load(name), SPEC[name]
    save_dir = tmp_path / "ckpt"
    # This checkout's plugin (the recipes' relative user_dir would find an installed copy from here).
    overrides = [f"task.data={tiny_data}", f"checkpoint.save_dir={save_dir}", "common.cpu=true",
                 "optimization.max_update=2", "common.log_interval=1", "common.log_format=json",
                 f"common.user_dir={USER_DIR}", *SMALL_MODEL]
    if spec["scheduler"] == "cosine_warmup":  # stop after 2 updates of the recipe's own schedule
        overrides.append(f"lr_scheduler.cosine_max_update={spec['max_update']}")
    if cfg.common.get("fp16", False) and not cfg.common.get("fp16_no_flatten_grads", False):
        overrides.append("common.fp16=false")  # fairseq's flat fp16 path needs a GPU
    log = run("fairseq-hydra-train", "--config-dir", CONFIGS, "--config-name", name, *overrides,
              cwd=str(tmp_path))
    records = parse_training_log(log)["train"]
    assert [int(r["num_updates"]) for r in records] == [1, 2], log[-3000:]
    assert all(math.isfinite(r["loss"]) for r in records)
    if spec["scheduler"] == "cosine_warmup" and spec["warmup"]:  # peak lr and warmup reached the run
        assert records[1]["lr"] == pytest.approx(spec["lr"] * 2 / spec["warmup"], rel=1e-3)
    elif spec["scheduler"] == "cosine_warmup":  # no warmup: the cosine starts at the peak
        assert records[1]["lr"] == pytest.approx(spec["lr"], rel=1e-3)
    # The plugin's criterion (not fairseq's full-softmax cross_entropy) computed the loss.
    assert re.search(r"criterion: \w*AdaptiveCrossEntropy", log), log[-3000:]
    # Outputs land where the recipe says: checkpoints, hydra's record and the log file.
    assert (save_dir / "checkpoint_last.pt").exists()
    assert (save_dir / "hydra" / "config.yaml").exists()
    assert "num_updates" in (save_dir / "train.log").read_text()


# ---- recipes for your own data (docs/data.md) ------------------------------------------------
def _read(name):
    with open(os.path.join(CONFIGS, f"{name}.yaml"), encoding="utf-8") as f:
        return f.read()


@pytest.mark.parametrize("name", ["enwik8_base", "text8_base"])
def test_character_recipes_say_how_to_prepare_and_where_bits_per_character_are(name):
    text = _read(name)
    assert f"python examples/char_level/prepare.py {name[:-5]}.zip --destdir data-bin/{name[:-5]}" in text
    assert "Bits per character = the \"Loss (base 2)\" fairseq-eval-lm prints" in text
    model = load(name).model
    assert list(model.cutoffs) == [] and not model.untie_weight  # one plain, tied softmax


def test_subword_recipe_says_how_to_prepare_score_per_word_and_decode():
    text = _read("subword_base")
    assert "python examples/subword/prepare.py --train train.txt" in text
    assert "--word-pieces sentencepiece" in text
    assert "--bpe sentencepiece" in text and "--sentencepiece-model data-bin/mycorpus/spm.model" in text
    model = load("subword_base").model
    assert list(model.cutoffs) == [] and not model.untie_weight


def _model_args(model_cfg):
    """The recipe's model section as fairseq-train options."""
    args = []
    for key, value in OmegaConf.to_container(model_cfg).items():
        flag = "--" + key.replace("_", "-")
        if key == "_name":
            continue
        if isinstance(value, bool):
            args += [flag] if value else []
        elif isinstance(value, list):
            args += [flag, ",".join(map(str, value))]
        else:
            args += [flag, str(value)]
    return args


def test_enwik8_recipe_is_the_papers_41m_parameter_model(tmp_path):
    from fairseq.data import Dictionary

    from truncated_bptt.fairseq_checkpoint import build_model

    d = Dictionary()
    for b in range(205):  # enwik8 has about 205 distinct byte values besides the newline
        d.add_symbol(f"b{b}")
    d.save(str(tmp_path / "dict.txt"))
    assert OmegaConf.to_container(load("enwik8_base").model) == \
        OmegaConf.to_container(load("text8_base").model)
    model, _, _ = build_model(str(tmp_path), _model_args(load("enwik8_base").model))
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 41
