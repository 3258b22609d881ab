"""examples/wikitext103: data preparation from an already-downloaded copy, batch overrides, and the
train / evaluate / generate scripts run for real on a tiny corpus (CPU)."""
import os
import re
import subprocess
import sys

import pytest

from examples.fairseq_logs import final_update, parse_eval_lm, parse_training_log
from examples.wikitext103 import batch_overrides
from fairseq_commands import ROOT, cli_env, write_lines

SCRIPTS = os.path.join(ROOT, "examples", "wikitext103")

VENV = os.path.dirname(os.path.dirname(sys.executable))  # the stack running the tests


def script(name, *args, env=None, check=True):
    proc = subprocess.run(["bash", os.path.join(SCRIPTS, name), *map(str, args)],
                          env=env or cli_env(VENV=VENV), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-4000:]
    return proc


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, cycle_text):
    """prepare.sh on a directory laid out as the WikiText-103 download (wiki.*.tokens)."""
    root = tmp_path_factory.mktemp("wt")
    for split, n, seed in (("train", 200, 0), ("valid", 30, 3), ("test", 30, 5)):
        write_lines(str(root / "raw" / f"wiki.{split}.tokens"), cycle_text(n, seed))
    proc = script("prepare.sh", "--raw-dir", root / "raw", "--dest", root / "data-bin",
                  "--workers", 1)
    assert "done" in proc.stdout
    return root


def test_prepare_accepts_both_namings(prepared, tmp_path):
    for split in ("train", "valid", "test"):
        assert (prepared / "data-bin" / f"{split}.bin").exists()
    # The pytorch/examples layout ({split}.txt) gives the same binarization.
    for split in ("train", "valid", "test"):
        os.makedirs(tmp_path / "raw", exist_ok=True)
        (tmp_path / "raw" / f"{split}.txt").write_bytes(
            (prepared / "raw" / f"wiki.{split}.tokens").read_bytes())
    script("prepare.sh", "--raw-dir", tmp_path / "raw", "--dest", tmp_path / "data-bin",
           "--workers", 1)
    for name in ("dict.txt", "train.bin", "test.idx"):
        assert (tmp_path / "data-bin" / name).read_bytes() == \
            (prepared / "data-bin" / name).read_bytes()


def test_prepare_names_a_missing_split(tmp_path, cycle_text):
    write_lines(str(tmp_path / "raw" / "train.txt"), cycle_text(10, 0))
    proc = script("prepare.sh", "--raw-dir", tmp_path / "raw", "--dest", tmp_path / "out",
                  check=False)
    assert proc.returncode != 0
    assert "no valid split" in proc.stdout and "wiki.valid.tokens or valid.txt" in proc.stdout


# The only (recipe, GPUs) of the grid below whose sequences per update (paper_base: 60) no
# whole number of streams per GPU can keep.
UNSPLITTABLE = {("paper_base", 8)}


@pytest.mark.parametrize("recipe", sorted(batch_overrides.DESIGNED_GPUS))
@pytest.mark.parametrize("gpus", [1, 2, 4, 8])
@pytest.mark.parametrize("mode", ["accumulate", "streams"])
def test_batch_overrides_keep_sequences_per_update(recipe, gpus, mode):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(ROOT, "configs", f"{recipe}.yaml"))
    designed = batch_overrides.DESIGNED_GPUS[recipe]
    total = cfg.dataset.batch_size * designed * cfg.optimization.update_freq[0]
    if (recipe, gpus) in UNSPLITTABLE:
        with pytest.raises(ValueError, match=f"{total} sequences per update"):
            batch_overrides.batch_overrides(recipe, gpus, mode)
        return
    values = dict(o.split("=") for o in batch_overrides.batch_overrides(recipe, gpus, mode))
    per_gpu = int(values["dataset.batch_size"])
    freq = int(values["optimization.update_freq"].strip("[]"))
    assert per_gpu * gpus * freq == total
    if mode == "streams" or gpus >= designed:  # the recipe's streams, split over the GPUs
        assert freq == 1
    else:  # the recipe's streams per GPU (its GPU memory), accumulated over segments
        assert per_gpu == cfg.dataset.batch_size


def test_batch_overrides_examples():
    assert batch_overrides.batch_overrides("wt103_base", 1) == [
        "dataset.batch_size=32", "optimization.update_freq=[8]"]
    assert batch_overrides.batch_overrides("wt103_base", 1, "streams") == [
        "dataset.batch_size=256", "optimization.update_freq=[1]"]
    assert batch_overrides.batch_overrides("paper_base", 1) == [
        "dataset.batch_size=15", "optimization.update_freq=[4]"]  # fairseq's README advice
    with pytest.raises(ValueError, match="evenly"):
        batch_overrides.batch_overrides("paper_base", 8)


SMALL = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.d_head=16",
         "model.d_inner=64", "model.mem_len=8", "task.tokens_per_sample=8",
         "optimization.max_update=3", "lr_scheduler.warmup_updates=1", "common.log_interval=1"]


@pytest.fixture(scope="module")
def trained(prepared):
    """train_1gpu.sh with the tiny CPU recipe (it runs on CPU: the 'GPU' count is 1)."""
    save_dir = prepared / "ckpt"
    proc = script("train_1gpu.sh", "tiny_cpu", f"checkpoint.save_dir={save_dir}", *SMALL,
                  "dataset.batch_size=4",
                  env=cli_env(VENV=VENV, DATA=str(prepared / "data-bin")))
    assert "optimization.update_freq=[1]" in proc.stdout  # the command is shown (set -x)
    assert final_update(parse_training_log(proc.stdout)) == 3
    return save_dir / "checkpoint_last.pt"


def _torchrun_needs_cuda():
    """fairseq-fixed derives the device from torch.cuda.device_count() under torchrun (0 here)."""
    import inspect

    import torch
    from fairseq.distributed import utils as distributed_utils

    source = inspect.getsource(distributed_utils._infer_torch_distributed_launch_init)
    return "device_count" in source and torch.cuda.device_count() == 0


def test_train_8gpu_script_runs_torchrun_processes(prepared, tmp_path):
    if _torchrun_needs_cuda():
        pytest.skip("this fairseq's torchrun setup divides by the CUDA device count: GPUs only")
    # Two CPU processes (gloo) stand in for GPUs: torchrun's environment drives fairseq's setup.
    proc = script("train_8gpu.sh", "tiny_cpu", f"checkpoint.save_dir={tmp_path / 'ckpt'}", *SMALL,
                  "distributed_training.distributed_backend=gloo",
                  "distributed_training.ddp_backend=legacy_ddp",  # torch DDP wants GPUs here
                  env=cli_env(VENV=VENV, DATA=str(prepared / "data-bin"), GPUS=2))
    # tiny_cpu is written for 1 device and 16 streams: on 2, 8 streams each keep 16 per update.
    assert "dataset.batch_size=8" in proc.stdout
    assert re.search(r"distributed init \(rank 1\)", proc.stdout), proc.stdout[-3000:]
    assert final_update(parse_training_log(proc.stdout)) == 3
    assert (tmp_path / "ckpt" / "checkpoint_last.pt").exists()


def test_evaluate_script(prepared, trained, cycle_text):
    proc = script("evaluate.sh", "tiny_cpu", trained,
                  env=cli_env(VENV=VENV, DATA=str(prepared / "data-bin")))
    assert "'mem_len': 256, 'clamp_len': 192" in proc.stdout
    n_tokens = sum(len(line.split()) + 1 for line in cycle_text(30, 5))
    assert parse_eval_lm(proc.stdout)["tokens"] == n_tokens, proc.stdout[-2000:]


def test_generate_script(prepared, trained, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat sat\n")
    proc = script("generate.sh", trained, "--cpu", "--max-len-b", 5,
                  env=cli_env(VENV=VENV, DATA=str(prepared / "data-bin"), PROMPTS=str(prompts),
                              MEM_LEN=32))
    hypos = [line for line in proc.stdout.splitlines() if line.startswith("H-")]
    assert len(hypos) == 1 and hypos[0].split("\t")[2].startswith("the cat sat"), proc.stdout[-2000:]
