"""Checks of the run's configuration at task setup (through the CLIs: the bad-input test in
tests/test_truncated_bptt_lm_task.py): here the decisions on configurations built directly."""
import os
import shutil
import time

import pytest
import torch
from omegaconf import OmegaConf

from truncated_bptt import setup_checks
from truncated_bptt.truncated_bptt_lm_task import TruncatedBPTTLMConfig


def run_config(save_dir, **checkpoint):
    return OmegaConf.create({
        "checkpoint": {"save_dir": str(save_dir), "restore_file": "checkpoint_last.pt",
                       "checkpoint_suffix": "", "finetune_from_model": None, **checkpoint},
        "dataset": {"batch_size": 2, "batch_size_valid": 2, "train_subset": "train",
                    "valid_subset": "valid", "disable_validation": False},
        "common_eval": {"path": None, "model_overrides": "{}"},
        "task": {"_name": "truncated_bptt_lm", "data": "unused"},
    })


def save(path, mtime):
    torch.save({"model": {"w": torch.zeros(500)}}, path)
    os.utime(path, (mtime, mtime))


def truncate_copy(src, dst):
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data[: len(data) // 3])


@pytest.mark.parametrize("suffix", ["", "-part1"])
def test_an_interrupted_copy_to_checkpoint_last_redirects_the_restore_file(tmp_path, caplog, suffix):
    now = time.time()
    save(tmp_path / f"checkpoint_1_2{suffix}.pt", now - 20)
    save(tmp_path / f"checkpoint_1_4{suffix}.pt", now - 10)
    truncate_copy(tmp_path / f"checkpoint_1_4{suffix}.pt", tmp_path / f"checkpoint_last{suffix}.pt")
    cfg = run_config(tmp_path, checkpoint_suffix=suffix)
    setup_checks.check_task_setup(cfg.task, TruncatedBPTTLMConfig)
    # fairseq appends the suffix to a non-default --restore-file itself
    assert cfg.checkpoint.restore_file == str(tmp_path / "checkpoint_1_4.pt")
    assert f"checkpoint_last{suffix}.pt in {tmp_path} is incomplete" in caplog.text

    cfg = run_config(tmp_path, checkpoint_suffix=suffix, finetune_from_model="pretrained.pt")
    with pytest.raises(ValueError, match="copy it over checkpoint_last"):
        setup_checks.check_task_setup(cfg.task, TruncatedBPTTLMConfig)


def test_intact_or_absent_checkpoints_and_scoring_runs_are_left_alone(tmp_path):
    cfg = run_config(tmp_path)
    setup_checks.check_task_setup(cfg.task, TruncatedBPTTLMConfig)  # nothing saved yet
    save(tmp_path / "checkpoint_last.pt", time.time())
    setup_checks.check_task_setup(cfg.task, TruncatedBPTTLMConfig)
    assert cfg.checkpoint.restore_file == "checkpoint_last.pt"
    # a task set up from a checkpoint's stored configuration (fairseq-fixed says so)
    shutil.copy(tmp_path / "checkpoint_last.pt", tmp_path / "checkpoint_1_1.pt")
    truncate_copy(tmp_path / "checkpoint_1_1.pt", tmp_path / "checkpoint_last.pt")
    setup_checks.check_task_setup(cfg.task, TruncatedBPTTLMConfig, from_checkpoint=True)
    assert cfg.checkpoint.restore_file == "checkpoint_last.pt"
    # a task config on its own (no run configuration around it): nothing to check
    setup_checks.check_task_setup(TruncatedBPTTLMConfig(data="x"), TruncatedBPTTLMConfig)


def test_validation_on_the_training_split_is_refused_unless_disabled(tmp_path):
    cfg = run_config(tmp_path)
    cfg.dataset.valid_subset = "valid,train"
    with pytest.raises(ValueError, match="--valid-subset includes the training split 'train'"):
        setup_checks.check_task_setup(cfg.task, TruncatedBPTTLMConfig)
    cfg.dataset.disable_validation = True
    setup_checks.check_task_setup(cfg.task, TruncatedBPTTLMConfig)


def test_a_task_set_up_from_a_stored_configuration_skips_the_training_checks(tmp_path):
    """fairseq-validate, hub loading and truncated-bptt-export set the task up from the
    configuration stored in the checkpoint, whose --restore-file may be long gone (here also an
    old run's validation on the training split): loading must not be refused for that."""
    from fairseq import checkpoint_utils

    from truncated_bptt import fairseq_checkpoint

    data = tmp_path / "data"
    data.mkdir()
    (data / "dict.txt").write_text("".join(f"w{i} 1\n" for i in range(20)))
    model, _, cfg = fairseq_checkpoint.build_model(str(data), [], arch="transformer_xl_tiny")
    cfg.checkpoint.restore_file = str(tmp_path / "gone" / "pretrained.pt")
    cfg.checkpoint.save_dir = str(tmp_path / "gone")
    cfg.dataset.valid_subset = "train"
    fairseq_checkpoint.save_checkpoint(model, cfg, str(tmp_path / "model.pt"))
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "model.pt")])
    assert len(task.dictionary) == 24 and len(models) == 1
