"""Under fairseq-hydra-train the job's real error is the last error printed, on both stacks (hydra
1.0.7 on Python 3.10 would otherwise end every failure with a TypeError about ``etype``)."""
import os

import hydra
import pytest

from fairseq_commands import ROOT, USER_DIR, preprocess, run, write_lines
from truncated_bptt import hydra_compat

HYDRA_HINT = "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."


def test_shim_is_installed_exactly_where_hydra_needs_it():
    assert hydra_compat.needs_shim("1.0.7", (3, 10))
    assert not hydra_compat.needs_shim("1.0.7", (3, 9))
    assert not hydra_compat.needs_shim("1.1.0", (3, 10))
    assert not hydra_compat.needs_shim("1.3.2", (3, 11))
    from hydra._internal import utils as hydra_utils

    installed = getattr(hydra_utils, "print_exception", None) is hydra_compat.print_exception
    assert installed == hydra_compat.needs_shim(hydra.__version__)


def run_job():
    """hydra trims its own frames up to the one named run_job."""
    raise_clear_error()


def raise_clear_error():
    raise ValueError("the clear message")


def test_hydra_reports_a_job_error_with_its_own_message(capsys):
    from hydra._internal.utils import run_and_report

    with pytest.raises(SystemExit):
        run_and_report(run_job)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == HYDRA_HINT
    assert [line for line in err if line.strip()][-2] == "ValueError: the clear message"
    assert "etype" not in "\n".join(err)


def test_fairseq_hydra_train_ends_with_the_real_error(tmp_path):
    """A recipe whose schedule cannot work (3 updates, 100 of warmup) stops with the scheduler's
    message as the last error line, followed only by hydra's usual hint."""
    write_lines(str(tmp_path / "text" / "train.txt"), ["a b c d e f"] * 20)
    write_lines(str(tmp_path / "text" / "valid.txt"), ["a b c d"] * 4)
    preprocess(str(tmp_path / "text"), str(tmp_path / "data"), splits=("train", "valid"))
    # user_dir as a path: the recipe's bare "truncated_bptt" would import an installed copy
    proc = run("fairseq-hydra-train", "--config-dir", os.path.join(ROOT, "configs"),
               "--config-name", "tiny_cpu", f"task.data={tmp_path / 'data'}",
               f"checkpoint.save_dir={tmp_path / 'ckpt'}", f"common.user_dir={USER_DIR}",
               "common.cpu=true", "optimization.max_update=3", "model.n_layer=1",
               "model.d_model=16", "model.n_head=2", "model.d_head=8", "model.d_inner=32",
               cwd=str(tmp_path), check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    assert lines[-1] == HYDRA_HINT, proc.stdout[-3000:]
    assert lines[-2].startswith("ValueError: cosine_warmup needs --max-update"), proc.stdout[-3000:]
    assert "etype" not in proc.stdout
