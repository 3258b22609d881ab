"""SaveSchedule against fairseq-train's own decision (fairseq_cli.train.validate_and_save, called
with stand-ins for the trainer and for validation and saving) over combinations of the options."""
import importlib.util
import itertools
import os
from types import SimpleNamespace

import fairseq
import pytest
from fairseq import checkpoint_utils, options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from omegaconf import OmegaConf

import truncated_bptt  # noqa: F401  (registers the task and model the command line names)
from truncated_bptt.checkpoint_schedule import SaveSchedule

EPOCH_STEPS = 6  # one step per update: updates 6 and 12 end an epoch
UPDATES = 14


@pytest.fixture(scope="module")
def fairseq_train():
    """fairseq's fairseq_cli/train.py (the name fairseq_cli is taken by tests/fairseq_cli.py)."""
    path = os.path.join(os.path.dirname(os.path.dirname(fairseq.__file__)), "fairseq_cli", "train.py")
    spec = importlib.util.spec_from_file_location("fairseq_cli_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def training_cfg(*extra):
    """fairseq-train's configuration for a command line of this task."""
    args = options.parse_args_and_arch(options.get_training_parser(), [
        "data", "--task", "truncated_bptt_lm", "--arch", "transformer_xl_tiny", "--batch-size", "1",
        *extra])
    return convert_namespace_to_omegaconf(args)


@pytest.fixture(scope="module")
def default_cfg():
    return training_cfg()


@pytest.fixture(scope="module")
def base_cfg(default_cfg):
    """fairseq-train's defaults as plain dicts of its groups."""
    return {group: OmegaConf.to_container(default_cfg[group], resolve=True)
            for group in ("checkpoint", "optimization", "dataset")}


OPTIONS = {
    "save_interval_updates": [0, 3],
    "max_update": [0, 10],
    "validate_after_updates": [0, 5],
    "no_save": [False, True],
    "patience": [-1, 2],
    "stop_time_hours": [0.0, 7.5],  # an hour per update below: time is up after update 8
    "disable_validation": [False, True],
    "validate_interval_updates": [0, 2],
}


def fairseq_decisions(fairseq_train, cfg, monkeypatch):
    """[(num_updates, end_of_epoch, validated, saved)] of one run, as fairseq-train decides."""
    events = []
    monkeypatch.setattr(fairseq_train, "validate",
                        lambda cfg, trainer, task, itr, subsets: events.append("valid") or [float(
                            trainer.get_num_updates())])  # worse and worse: --patience stops
    monkeypatch.setattr(checkpoint_utils, "save_checkpoint", lambda *a, **k: events.append("save"))
    monkeypatch.setattr(fairseq_train.should_stop_early, "best", None, raising=False)
    decisions = []
    for n in range(1, UPDATES + 1):
        trainer = SimpleNamespace(get_num_updates=lambda n=n: n,
                                  cumulative_training_time=lambda n=n: 3600.0 * n)
        end_of_epoch = n % EPOCH_STEPS == 0
        events.clear()
        _, stop = fairseq_train.validate_and_save(cfg, trainer, SimpleNamespace(),
                                                  SimpleNamespace(epoch=1 + (n - 1) // EPOCH_STEPS),
                                                  ["valid"], end_of_epoch)
        # (checkpoint_utils.save_checkpoint writes nothing with --no-save)
        decisions.append((n, end_of_epoch, "valid" in events,
                          "save" in events and not cfg.checkpoint.no_save))
        if stop:
            break
    return decisions


def test_the_schedule_announces_every_mid_epoch_save_fairseq_makes_and_no_other(
        fairseq_train, base_cfg, monkeypatch):
    combos = 0
    for values in itertools.product(*OPTIONS.values()):
        setting = dict(zip(OPTIONS, values))
        # (namespaces rather than the DictConfig: the same values, read 50x faster)
        cfg = SimpleNamespace(**{
            group: SimpleNamespace(**{k: setting.get(k, v) for k, v in values.items()})
            for group, values in base_cfg.items()})
        schedule = SaveSchedule(**{k: v for k, v in setting.items()
                                   if k in SaveSchedule.__dataclass_fields__})
        for n, end_of_epoch, validated, saved in fairseq_decisions(fairseq_train, cfg, monkeypatch):
            announced = schedule.saves_mid_epoch_after_update(n, end_of_epoch)
            after_validation = validated and schedule.may_save_mid_epoch_after_validation(end_of_epoch)
            case = (setting, n)
            # nothing is gathered for a save fairseq skips, or for one that ends an epoch
            assert not announced or (saved and not end_of_epoch), case
            if saved and not end_of_epoch and not announced and not after_validation:
                # the one save nothing announces (documented; a warning says it has no memory)
                assert setting["stop_time_hours"] > 0 and setting["disable_validation"], case
        combos += 1
    assert combos == 2 ** len(OPTIONS)


def test_the_task_reads_the_schedule_from_fairseqs_options(default_cfg):
    """(The task reads the options through interpolations of its config into fairseq's groups.)"""
    from fairseq.data import Dictionary

    from truncated_bptt.truncated_bptt_lm_task import TruncatedBPTTLMTask

    keeper = TruncatedBPTTLMTask(default_cfg.task, Dictionary()).memory_keeper
    assert keeper.schedule == SaveSchedule() and not keeper.loss_scaling
    cfg = training_cfg("--save-interval-updates", "5", "--max-update", "9",
                       "--validate-after-updates", "7", "--no-save", "--patience", "3",
                       "--stop-time-hours", "1.5", "--fp16")
    keeper = TruncatedBPTTLMTask(cfg.task, Dictionary()).memory_keeper
    assert keeper.schedule == SaveSchedule(5, 9, 7, True, 3, 1.5) and keeper.loss_scaling
