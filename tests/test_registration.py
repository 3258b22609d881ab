"""Importing the plugin registers everything once, under names that do not collide with fairseq's,
whether it arrives by ``import truncated_bptt``, by ``--user-dir``, or both in one process."""
import argparse
import os
import subprocess
import sys

from fairseq_commands import ROOT, USER_DIR, cli_env  # noqa: F401  (tests/fairseq_commands.py)


def test_import_registers_every_component():
    import truncated_bptt  # noqa: F401
    from fairseq.criterions import CRITERION_REGISTRY
    from fairseq.models import ARCH_MODEL_REGISTRY
    from fairseq.optim import OPTIMIZER_REGISTRY
    from fairseq.optim.lr_scheduler import LR_SCHEDULER_REGISTRY
    from fairseq.tasks import TASK_REGISTRY

    assert TASK_REGISTRY["truncated_bptt_lm"].__module__ == "truncated_bptt.truncated_bptt_lm_task"
    for arch in ("transformer_xl", "transformer_xl_wt103_base", "transformer_xl_wt103_large",
                 "transformer_xl_paper_base", "transformer_xl_tiny"):
        assert ARCH_MODEL_REGISTRY[arch].__module__ == "truncated_bptt.transformer_xl_model", arch
    assert CRITERION_REGISTRY["adaptive_cross_entropy"].__module__.startswith("truncated_bptt.")
    assert OPTIMIZER_REGISTRY["nvidia_lamb"].__module__.startswith("truncated_bptt.")
    assert LR_SCHEDULER_REGISTRY["cosine_warmup"].__module__.startswith("truncated_bptt.")
    # fairseq's own components of similar names are untouched.
    assert OPTIMIZER_REGISTRY["lamb"].__module__.startswith("fairseq.")
    assert LR_SCHEDULER_REGISTRY["cosine"].__module__.startswith("fairseq.")


def test_user_dir_after_import_in_one_process(monkeypatch):
    """`import truncated_bptt` and then `--user-dir truncated_bptt` from the repository root (and by
    absolute path) must neither register twice nor trip fairseq's "not globally unique" check."""
    import truncated_bptt
    from fairseq import utils

    assert os.path.dirname(os.path.abspath(truncated_bptt.__file__)) == USER_DIR
    monkeypatch.chdir(ROOT)
    utils.import_user_module(argparse.Namespace(user_dir="truncated_bptt"))
    utils.import_user_module(argparse.Namespace(user_dir=USER_DIR))


def test_user_dir_resolves_from_any_directory_when_installed(tmp_path):
    """Outside the repository, `--user-dir truncated_bptt` finds the installed package through
    fairseq's site-packages fallback, and importing it afterwards is the same module."""
    code = (
        "import argparse, truncated_bptt, os\n"
        "from fairseq import utils\n"
        "utils.import_user_module(argparse.Namespace(user_dir='truncated_bptt'))\n"
        "from fairseq.tasks import TASK_REGISTRY\n"
        "assert 'truncated_bptt_lm' in TASK_REGISTRY\n"
        "print(os.path.dirname(truncated_bptt.__file__))\n"
    )
    env = cli_env()
    env.pop("PYTHONPATH")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "site-packages" in out.stdout.strip().splitlines()[-1]
