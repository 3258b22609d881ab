"""Incomplete and corrupt checkpoint files: recognised, named with the intact ones beside them, and
an interrupted copy to checkpoint_last.pt resumed from the file it was copied from, exactly."""
import os
import shutil
import time

import pytest
import torch

from examples.fairseq_logs import by_update, parse_training_log
from fairseq_commands import USER_DIR, run
from truncated_bptt import checkpoint_integrity as ci


def write_checkpoint(path, n=1000, mtime=None):
    torch.save({"model": {"w": torch.arange(n, dtype=torch.float32)}, "extra_state": {"n": n}}, path)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return str(path)


def interrupted_copy(src, dst, fraction):
    """What a crash during ``shutil.copyfile(src, dst)`` leaves: the first bytes of ``src``."""
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data[: int(len(data) * fraction)])


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.3, 0.9, 0.999])
def test_an_interrupted_copy_is_incomplete(tmp_path, fraction):
    src = write_checkpoint(tmp_path / "checkpoint_1_10.pt")
    interrupted_copy(src, tmp_path / "checkpoint_last.pt", fraction)
    problem = ci.checkpoint_problem(str(tmp_path / "checkpoint_last.pt"), verify_data=False)
    assert problem is not None and problem.incomplete, problem
    assert ci.checkpoint_problem(src) is None


def test_damaged_files_are_corrupt_and_checksums_catch_flipped_data(tmp_path):
    good = write_checkpoint(tmp_path / "good.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 4096)
    problem = ci.checkpoint_problem(str(garbage))
    assert problem is not None and not problem.incomplete and "not a PyTorch checkpoint" in problem.text

    flipped = tmp_path / "flipped.pt"
    data = bytearray(open(good, "rb").read())
    start = data.index(torch.arange(1000, dtype=torch.float32).numpy().tobytes()[:64])
    data[start + 100] ^= 0xFF  # one byte of the tensor's data
    flipped.write_bytes(bytes(data))
    assert torch.load(flipped)["model"]["w"][25] != 25  # torch itself loads it silently
    assert ci.checkpoint_problem(str(flipped), verify_data=False) is None  # structure is fine
    problem = ci.checkpoint_problem(str(flipped), verify_data=True)
    assert problem is not None and "fails its CRC-32 check" in problem.text

    legacy = tmp_path / "legacy.pt"  # torch's pre-1.6 format cannot be checked: accepted
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    assert ci.checkpoint_problem(str(legacy)) is None


def test_intact_checkpoints_beside_newest_first(tmp_path):
    now = time.time()
    write_checkpoint(tmp_path / "checkpoint_1_2.pt", mtime=now - 30)
    write_checkpoint(tmp_path / "checkpoint_best.pt", mtime=now - 20)
    write_checkpoint(tmp_path / "checkpoint_1_4.pt", mtime=now - 10)
    write_checkpoint(tmp_path / "scorer.pt")  # not a fairseq checkpoint name: ignored
    interrupted_copy(tmp_path / "checkpoint_1_4.pt", tmp_path / "checkpoint_last.pt", 0.5)
    interrupted_copy(tmp_path / "checkpoint_1_2.pt", tmp_path / "checkpoint_2.pt", 0.5)
    last = str(tmp_path / "checkpoint_last.pt")
    assert [os.path.basename(p) for p in ci.intact_checkpoints_beside(last)] == [
        "checkpoint_1_4.pt", "checkpoint_best.pt", "checkpoint_1_2.pt"]
    with pytest.raises(ValueError) as err:
        ci.check_readable(last, "--path")
    message = str(err.value)
    assert message.startswith(f"checkpoint {last} is incomplete (") and "\n" not in message
    assert message.endswith("intact checkpoints beside it, newest first: checkpoint_1_4.pt, "
                            "checkpoint_best.pt, checkpoint_1_2.pt; pass one of them to --path")
    intact = r"intact checkpoints in .*: checkpoint_1_4.pt, checkpoint_best.pt, checkpoint_1_2.pt\)"
    with pytest.raises(FileNotFoundError, match=r"checkpoint_9.pt does not exist \(" + intact):
        ci.check_readable(str(tmp_path / "checkpoint_9.pt"), "--path")
    with pytest.raises(FileNotFoundError, match=r"is a directory \(" + intact
                       + ": pass an existing checkpoint file to --path"):
        ci.check_readable(str(tmp_path), "--path")


def test_resume_decisions(tmp_path):
    now = time.time()
    older = write_checkpoint(tmp_path / "checkpoint_1_2.pt", mtime=now - 20)
    newest = write_checkpoint(tmp_path / "checkpoint_1_4.pt", mtime=now - 10)
    save_dir = str(tmp_path)
    # nothing to resume from, or an intact checkpoint_last.pt: fairseq's own choice stands
    assert ci.restore_path_to_use(save_dir, "checkpoint_last.pt") is None
    assert ci.restore_path_to_use(save_dir, str(tmp_path / "checkpoint_last.pt")) is None
    # a missing file given explicitly would make fairseq train from scratch without a word
    with pytest.raises(FileNotFoundError, match=r"checkpoint_1_6.pt does not exist \(intact "
                       r"checkpoints in .*: checkpoint_1_4.pt, checkpoint_1_2.pt\), so fairseq would silently "
                       r"train from scratch: pass an existing checkpoint file to --restore-file"):
        ci.restore_path_to_use(save_dir, str(tmp_path / "checkpoint_1_6.pt"))
    shutil.copy(newest, tmp_path / "checkpoint_last.pt")
    assert ci.restore_path_to_use(save_dir, "checkpoint_last.pt") is None
    # an interrupted copy to checkpoint_last.pt: the newest intact checkpoint instead
    interrupted_copy(newest, tmp_path / "checkpoint_last.pt", 0.6)
    assert ci.restore_path_to_use(save_dir, "checkpoint_last.pt") == newest
    # a file the user named is never swapped for another one
    with pytest.raises(ValueError, match="is incomplete .*pass one of them to --restore-file"):
        ci.restore_path_to_use(save_dir, str(tmp_path / "checkpoint_last.pt"))
    # damaged rather than incomplete: the user decides
    (tmp_path / "checkpoint_last.pt").write_bytes(b"garbage" * 100)
    with pytest.raises(ValueError, match="not a PyTorch checkpoint.*checkpoint_1_4.pt, checkpoint_1_2.pt"):
        ci.restore_path_to_use(save_dir, "checkpoint_last.pt")
    # nothing intact beside it
    interrupted_copy(newest, tmp_path / "checkpoint_last.pt", 0.6)
    os.remove(newest)
    os.remove(older)
    with pytest.raises(ValueError, match="no intact checkpoint is beside it: move it away"):
        ci.restore_path_to_use(save_dir, "checkpoint_last.pt")


# ---------------------------------------------------------------- through fairseq-train
def test_fairseq_train_resumes_exactly_after_an_interrupted_copy_to_checkpoint_last(
        tmp_path, cycle_corpus):
    """fairseq saves checkpoint_1_4.pt atomically, then copies it to checkpoint_last.pt; a crash
    in that copy leaves a truncated checkpoint_last.pt. Restarting the same command resumes from
    checkpoint_1_4.pt (with a warning) and ends bit-identical to the uninterrupted run, which also
    saved checkpoint_1_4.pt on its way."""
    data = cycle_corpus(str(tmp_path), {"train": (60, 0), "valid": (8, 1)})

    def train(save_dir, max_update):
        return run("fairseq-train", data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm",
                   "--arch", "transformer_xl_tiny", "--cpu", "--seed", "3", "--optimizer", "adam",
                   "--lr", "0.003", "--tokens-per-sample", "8", "--batch-size", "4",
                   "--num-workers", "0", "--disable-validation", "--no-epoch-checkpoints",
                   "--save-interval-updates", "2", "--log-format", "json", "--log-interval", "1",
                   "--max-update", max_update, "--save-dir", save_dir)

    full = train(tmp_path / "full", 6)
    crashed = tmp_path / "crashed"  # the directory as the crash at update 4 left it
    crashed.mkdir()
    for name in ("checkpoint_1_2.pt", "checkpoint_1_4.pt"):
        shutil.copy2(tmp_path / "full" / name, crashed / name)
    interrupted_copy(crashed / "checkpoint_1_4.pt", crashed / "checkpoint_last.pt", 0.7)

    resumed = train(crashed, 6)
    assert ("checkpoint_last.pt in %s is incomplete (fairseq's copy to it was interrupted): "
            "resuming from the newest intact checkpoint beside it, %s/checkpoint_1_4.pt"
            % (crashed, crashed)) in resumed
    assert "restored the memory of streams 0-3 at step 4" in resumed

    def losses(log):
        return by_update(parse_training_log(log)["train"])

    assert losses(resumed) == {u: v for u, v in losses(full).items() if u > 4}
    a = torch.load(tmp_path / "full" / "checkpoint_last.pt", weights_only=True)["model"]
    b = torch.load(crashed / "checkpoint_last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
