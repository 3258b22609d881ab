"""Build a ``transformer_xl`` model from command-line style options and write it as a fairseq
checkpoint that fairseq-eval-lm / fairseq-generate / fairseq-interactive load directly.

Used by checkpoint conversion (weights trained elsewhere) and by tests that need a checkpoint
without training one.
"""
import os
from typing import List, Tuple

import torch
from fairseq import checkpoint_utils, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from omegaconf import OmegaConf

USER_DIR = os.path.dirname(os.path.abspath(__file__))


def build_model(data_dir: str, model_args: List[str], arch: str = "transformer_xl",
                task_args: List[str] = ()) -> Tuple[torch.nn.Module, object, object]:
    """Parse ``model_args`` as fairseq-train would and build the model on ``data_dir/dict.txt``.

    Returns ``(model, task, cfg)``; ``cfg`` is the full fairseq config stored in the checkpoint.
    """
    parser = options.get_training_parser()
    argv = [data_dir, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm", "--arch", arch,
            "--criterion", "adaptive_cross_entropy", "--optimizer", "adam", "--cpu",
            *task_args, *model_args]
    args = options.parse_args_and_arch(parser, input_args=argv)
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    model.eval()
    return model, task, cfg


def save_checkpoint(model, cfg, path: str) -> None:
    """Write ``model``'s weights with ``cfg`` in fairseq's checkpoint layout (no optimizer state)."""
    state = {
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": model.state_dict(),
        "criterion": None,
        "optimizer_history": [{
            "criterion_name": "AdaptiveCrossEntropyCriterion",
            "optimizer_name": "none",
            "lr_scheduler_state": {"best": None},
            "num_updates": 0,
        }],
        "task_state": {},
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
        "last_optimizer_state": None,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    checkpoint_utils.torch_persistent_save(state, path)
