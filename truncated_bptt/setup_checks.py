"""Checks of a run's whole configuration, made when fairseq sets up the task.

The task is set up by every fairseq entry point before it reads a checkpoint or any data, and its
configuration node hangs in the run's full configuration (``checkpoint``, ``dataset``,
``common_eval`` ...), so wrong inputs that involve other groups are caught here, each with one line
naming the problem and the fix:

- ``--batch-size`` / ``--batch-size-valid`` that are not positive (streams per GPU);
- scoring and generation (``--path`` given): a ``--model-overrides`` that fairseq would ignore or that
  has the wrong type (:mod:`truncated_bptt.model_overrides`), and a ``--path`` that does not exist or
  is incomplete or corrupt (:mod:`truncated_bptt.checkpoint_integrity`);
- training: validating on the training split (both would share one memory), and the checkpoint to
  resume from: an incomplete ``checkpoint_last.pt`` (fairseq's copy to it was interrupted) is
  replaced by the newest intact checkpoint beside it, with a warning; any other incomplete or
  damaged checkpoint is refused. Every process decides the same way from the files' structure
  (a few reads each); the data's checksums are only verified for ``--path``, where one process
  reads the whole file anyway.

Training checks are skipped for a task set up from a checkpoint's stored configuration
(fairseq-validate, hub loading, truncated-bptt-export), where the stored ``save_dir`` and
``--restore-file`` may not exist any more: fairseq-fixed says so (``from_checkpoint``); fairseq
0.12.2 does not, but it loads stored configurations in struct mode, while fairseq-train and
fairseq-hydra-train turn struct mode off (``add_defaults``) before they set the task up.
"""
import logging
from typing import Optional

from fairseq import utils
from omegaconf import DictConfig, OmegaConf

from truncated_bptt import checkpoint_integrity, model_overrides

logger = logging.getLogger(__name__)


def run_config(task_cfg) -> Optional[DictConfig]:
    """The full configuration ``task_cfg`` belongs to, or None (a task config built on its own)."""
    if not OmegaConf.is_config(task_cfg):
        return None
    root = task_cfg._get_root()
    if root is task_cfg or "checkpoint" not in root or "dataset" not in root:
        return None
    return root


def check_task_setup(task_cfg, task_config_class, from_checkpoint=False, **unused) -> None:
    """Run the checks above on the configuration of the task being set up."""
    root = run_config(task_cfg)
    if root is None:
        return
    check_batch_sizes(root.dataset)
    paths = root.get("common_eval", {}).get("path")
    if paths:
        from truncated_bptt.transformer_xl_model import TransformerXLConfig

        model_overrides.check(root.common_eval.model_overrides, TransformerXLConfig,
                              task_config_class)
        for path in utils.split_paths(paths):
            checkpoint_integrity.check_readable(path, "--path")
    elif not from_checkpoint and not OmegaConf.is_struct(root):
        check_validation_split(root.dataset)
        choose_restore_file(root.checkpoint)


def check_batch_sizes(dataset) -> None:
    for option, value in (("--batch-size", dataset.get("batch_size")),
                          ("--batch-size-valid", dataset.get("batch_size_valid"))):
        if value is not None and value <= 0:
            raise ValueError(f"{option} must be a positive number of streams per GPU (got {value})")


def check_validation_split(dataset) -> None:
    """Validation on the training split would share the training streams' memory (the model keeps
    one memory per split name) and overwrite it mid-epoch."""
    if dataset.get("disable_validation"):
        return
    train = dataset.get("train_subset", "train")
    if train in str(dataset.get("valid_subset", "valid")).split(","):
        raise ValueError(
            f"--valid-subset includes the training split {train!r}: the model keeps one memory "
            "per split name, so validating on it would overwrite the training streams' memory; "
            "validate on another split (binarize a copy of the text under another name if you "
            "want that text) or pass --disable-validation"
        )


def choose_restore_file(checkpoint) -> None:
    """Point ``checkpoint.restore_file`` at the newest intact checkpoint when fairseq would resume
    from an incomplete ``checkpoint_last.pt``; refuse other unreadable restore files."""
    suffix = checkpoint.get("checkpoint_suffix") or ""
    replacement = checkpoint_integrity.restore_path_to_use(
        checkpoint.save_dir, checkpoint.restore_file, suffix
    )
    if replacement is None:
        return
    last = f"checkpoint_last{suffix}.pt"
    if checkpoint.get("finetune_from_model"):
        raise ValueError(
            f"{last} in {checkpoint.save_dir} is incomplete (an interrupted copy); the newest "
            f"intact checkpoint beside it is {replacement}: copy it over {last} to resume "
            "(--finetune-from-model excludes --restore-file)"
        )
    logger.warning(
        "%s in %s is incomplete (fairseq's copy to it was interrupted): resuming from the newest "
        "intact checkpoint beside it, %s", last, checkpoint.save_dir, replacement,
    )
    # fairseq appends the suffix to a non-default --restore-file itself
    checkpoint.restore_file = replacement[: len(replacement) - len(f"{suffix}.pt")] + ".pt"
