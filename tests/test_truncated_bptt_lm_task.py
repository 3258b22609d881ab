"""truncated_bptt_lm through the real fairseq-train / fairseq-eval-lm (and torchrun) on corpora
whose words name their position (train word i is "t<i>", valid "v<i>", test "e<i>")."""
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest
import torch

from examples.fairseq_logs import by_update, parse_eval_lm, parse_training_log, parse_word_probs
from fairseq_commands import BIN, USER_DIR, cli_env, preprocess, run, write_lines

WORDS_PER_LINE = 7
SIZES = {"train": 480, "valid": 90, "test": 61}
PREFIX = {"train": "t", "valid": "v", "test": "e"}
TINY = ["--arch", "transformer_xl_tiny", "--cpu", "--seed", "7", "--log-format", "json",
        "--log-interval", "1", "--optimizer", "adam", "--lr", "0.003", "--num-workers", "0"]


def corpus_text(split, n):
    words = [f"{PREFIX[split]}{i}" for i in range(n)]
    return [" ".join(words[i:i + WORDS_PER_LINE]) for i in range(0, n, WORDS_PER_LINE)]


def make_corpus(root, sizes=SIZES, dictionary_words=None):
    """Text and fairseq-preprocess output under ``root``; one dictionary holding every word."""
    text, data = os.path.join(root, "text"), os.path.join(root, "data")
    for split, n in sizes.items():
        write_lines(os.path.join(text, f"{split}.txt"), corpus_text(split, n))
    words = dictionary_words or [f"{PREFIX[s]}{i}" for s, n in SIZES.items() for i in range(n)]
    write_lines(os.path.join(root, "dict.txt"), [f"{w} 1" for w in words])
    preprocess(text, data, splits=tuple(sizes), extra=["--srcdict", os.path.join(root, "dict.txt")])
    return data


def split_tokens(split, n):
    """The split as fairseq reads it: every line's words, then eos."""
    out = []
    for line in corpus_text(split, n):
        out += line.split() + ["</s>"]
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_corpus(str(tmp_path_factory.mktemp("corpus")))


def train(data, save_dir, *args, env=None, check=True):
    return run("fairseq-train", data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm",
               "--save-dir", save_dir, *TINY, *args, env=env, check=check)


def losses(log):
    """{num_updates: training loss} of fairseq-train's log."""
    return by_update(parse_training_log(log)["train"])


def params(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- exact resume, memory isolation
def test_resume_mid_epoch_is_exact_and_validation_never_touches_training_memory(data, tmp_path):
    """480 train tokens (+69 eos) in 4 streams of 8-token steps: 18 steps per epoch. Stopping at
    update 10 and resuming to 22 (past the epoch boundary) must equal an uninterrupted run bit for
    bit (dropout 0.1 on: fairseq reseeds every update). The uninterrupted run validates after every
    update, the interrupted ones never: validation must not disturb the training streams. Resuming
    from the same checkpoint with its memory removed must not be exact (the memory matters)."""
    common = ["--tokens-per-sample", "8", "--batch-size", "4", "--no-epoch-checkpoints"]
    full = train(data, tmp_path / "full", *common, "--max-update", "22",
                 "--validate-interval-updates", "1")
    assert "criterion: AdaptiveCrossEntropyCriterion" in full  # fairseq's default, replaced
    first = train(data, tmp_path / "part", *common, "--max-update", "10", "--disable-validation")
    assert "restored the memory" not in first

    shutil.copytree(tmp_path / "part", tmp_path / "amnesic")
    ckpt = torch.load(tmp_path / "amnesic" / "checkpoint_last.pt", map_location="cpu",
                      weights_only=True)
    assert ckpt["extra_state"]["train_iterator"]["iterations_in_epoch"] == 10
    del ckpt["extra_state"]["train_iterator"]["stream_memory"]
    torch.save(ckpt, tmp_path / "amnesic" / "checkpoint_last.pt")

    resumed = train(data, tmp_path / "part", *common, "--max-update", "22", "--disable-validation")
    assert "restored the memory of streams 0-3 at step 10" in resumed
    full_losses, resumed_losses = losses(full), losses(resumed)
    assert sorted(resumed_losses) == list(range(11, 23))
    assert {u: full_losses[u] for u in resumed_losses} == resumed_losses
    a, b = params(tmp_path / "full" / "checkpoint_last.pt"), params(tmp_path / "part" / "checkpoint_last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    amnesic = train(data, tmp_path / "amnesic", *common, "--max-update", "11",
                    "--disable-validation")
    assert "has no memory" in amnesic
    assert losses(amnesic)[11] != full_losses[11]


def test_update_freq_advances_the_same_streams_across_micro_batches(data, tmp_path):
    """--update-freq 2 feeds the next two segments of the same streams within an update, memory
    flowing between them: with a frozen model (lr 0, dropout 0), 3 updates of 2 micro-batches leave
    exactly the stream position and memory of 6 single-segment updates."""
    common = ["--tokens-per-sample", "8", "--batch-size", "2", "--disable-validation",
              "--no-epoch-checkpoints", "--dropout", "0", "--lr", "0"]
    train(data, tmp_path / "uf2", *common, "--update-freq", "2", "--max-update", "3")
    train(data, tmp_path / "uf1", *common, "--max-update", "6")
    states = [
        torch.load(tmp_path / d / "checkpoint_last.pt", map_location="cpu",
                   weights_only=True)["extra_state"]["train_iterator"]
        for d in ("uf2", "uf1")
    ]
    assert states[0]["iterations_in_epoch"] == states[1]["iterations_in_epoch"] == 6
    mems = [s["stream_memory"]["mems"] for s in states]
    assert len(mems[0]) == len(mems[1]) == 2  # transformer_xl_tiny: 2 layers
    for a, b in zip(*mems):
        assert a.shape == (2, 32, 64) and torch.equal(a, b)


def test_data_directories_rotate_per_epoch(data, tmp_path):
    """DATA a:b reads train from a in epoch 1 and from b in epoch 2; validation from a."""
    b = tmp_path / "b"
    shutil.copytree(data, b)
    for ext in ("bin", "idx"):  # b's train split is the valid text: 90 words + 13 eos
        shutil.copy(os.path.join(data, f"valid.{ext}"), b / f"train.{ext}")
    out = train(f"{data}:{b}", tmp_path / "ck", "--tokens-per-sample", "32", "--batch-size", "4",
                "--max-epoch", "2", "--no-save")
    loaded = re.findall(r"\| (\w+): ([\d,]+) tokens from (\S+)", out)
    train_sources = [(n, src) for split, n, src in loaded if split == "train"]
    # (after the last epoch fairseq-train also loads the next epoch's data before stopping)
    a_train, b_train = ("549", f"{data}/train"), ("103", f"{b}/train")
    assert train_sources[:2] == [a_train, b_train]
    assert {src for split, _, src in loaded if split == "valid"} == {f"{data}/valid"}


# ---------------------------------------------------------------- distributed
def torchrun_command(nproc, *args, program=None):
    """``program`` (default: fairseq-train) with ``args`` in ``nproc`` CPU processes started by
    torchrun. Each process is told its rank and the init method explicitly: fairseq-fixed (py311)
    ignores torchrun's environment when there is at most one CUDA device, and then divides by the
    (zero) CUDA device count."""
    program = program or [os.path.join(BIN, "fairseq-train")]
    return [os.path.join(BIN, "torchrun"), "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), "--no-python",
            "bash", "-c", 'exec "$0" "$@" --distributed-rank "$RANK"',
            *program, *[str(a) for a in args],
            "--distributed-world-size", str(nproc), "--distributed-init-method", "env://",
            "--distributed-no-spawn"]


def torchrun(nproc, *args, program=None):
    proc = subprocess.run(torchrun_command(nproc, *args, program=program), env=cli_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def gathers(log):
    """[(update, why)] of the memory gathers rank 0 logged."""
    return [(int(u), why) for u, why in
            re.findall(r"gathered the memory of \d+ training streams .* at update (\d+), (.*)$",
                       log, re.M)]


def worker_pids(launcher_pid):
    """{rank: process id} of torchrun's workers (children of ``launcher_pid``, in their own
    sessions)."""
    pids = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        ranks = [v[5:] for v in environ if v.startswith(b"RANK=")]
        if parent == launcher_pid and ranks:
            pids[int(ranks[0])] = int(pid)
    return pids


def stop_job(proc):
    """End a torchrun job that is still running: its workers, then torchrun."""
    if proc.poll() is None:
        for pid in worker_pids(proc.pid).values():
            os.kill(pid, signal.SIGKILL)
        proc.kill()
    proc.wait()


def wait_for_file(path, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before writing {path}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.02)


def test_a_rank_killed_mid_run_and_the_restarted_job_end_as_the_uninterrupted_run(data, tmp_path):
    """W=2, B=2 (gloo on CPU), validating and saving every 4 updates and at the end of the epoch
    (9 steps of 16 tokens; 12 updates). Rank 1 is SIGKILLed as soon as checkpoint_1_4.pt exists
    (8 updates before the end); torchrun ends the job; the same command restarted resumes (with
    both ranks' memory) and ends with the weights of an uninterrupted 2-process run, bit for bit,
    and the per-update losses of 1 process with 4 streams (to float rounding: gradients are summed
    in another order). Memory is gathered only for the mid-epoch checkpoints (not for the one
    ending the epoch, nor for validations). Dropout is 0: each process draws its own dropout
    masks, so with dropout only the statistics would agree with one process."""
    common = ["--tokens-per-sample", "16", "--no-epoch-checkpoints", "--dropout", "0",
              "--max-update", "12", "--save-interval-updates", "4"]
    single = train(data, tmp_path / "w1", *common, "--batch-size", "4", "--disable-validation")

    def args(save_dir):
        return [data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm", "--save-dir", save_dir,
                *TINY, *common, "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
                "--batch-size", "2"]

    full = torchrun(2, *args(tmp_path / "full"))
    assert '"bsz": "4"' in full  # two processes with 2 streams each took part
    assert gathers(full) == [(4, "for the checkpoint"), (8, "for the checkpoint"),
                             (12, "for the checkpoint")]  # not at 9, which ends the epoch

    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(torchrun_command(2, *args(tmp_path / "w2")), env=cli_env(),
                                stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for_file(tmp_path / "w2" / "checkpoint_1_4.pt", proc)
            os.kill(worker_pids(proc.pid)[1], signal.SIGKILL)
            proc.wait(timeout=300)
        finally:
            stop_job(proc)
    killed = (tmp_path / "killed.log").read_text()
    assert proc.returncode != 0 and "SIGKILL" in killed, killed[-3000:]
    assert "done training" not in killed

    resumed = torchrun(2, *args(tmp_path / "w2"))
    restored = re.search(r"restored the memory of streams 0-1 at step (\d+)", resumed)
    assert restored, "the restarted job did not restore the streams' memory"
    step = int(restored.group(1))
    assert step >= 4 and sorted(losses(resumed)) == list(range(step + 1, 13))
    a = params(tmp_path / "full" / "checkpoint_last.pt")
    b = params(tmp_path / "w2" / "checkpoint_last.pt")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []  # bit-identical

    expected, got = losses(single), losses(full)
    assert sorted(got) == list(range(1, 13))
    for u in got:
        assert got[u] == pytest.approx(expected[u], abs=2e-3), u
    a = params(tmp_path / "w1" / "checkpoint_last.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


# Runs fairseq-train's entry point after making update 5's first attempt overflow in
# fp16 (its loss scale set to inf: the scaled loss and every gradient overflow, and fairseq's
# DynamicLossScaler raises OverflowError as for any overflow; the scale is then put back so that
# the run goes on as before). fairseq's overflow path makes its zero gradient norm with .cuda()
# (written for GPUs): on CPU that returns the tensor itself. Memory is gathered in 1000-byte
# chunks (several per layer, the last one shorter). At every save each rank records its live
# training memory and position, and rank 0 keeps a copy of the checkpoint just written.
OVERFLOW_DRIVER = """
import os, shutil, sys
import torch
from fairseq import checkpoint_utils
from fairseq.trainer import Trainer
from fairseq_cli import train
from truncated_bptt import memory_gather

memory_gather.CHUNK_BYTES = 1000
torch.Tensor.cuda = lambda self, *args, **kwargs: self
overflow_at = 4  # the update after the first save
original_train_step, forced = Trainer.train_step, []

def train_step(self, samples, raise_oom=False):
    force = self.get_num_updates() == overflow_at and not forced
    if force:
        forced.append(self.optimizer.scaler.loss_scale)
        self.optimizer.scaler.loss_scale = float("inf")
    try:
        return original_train_step(self, samples, raise_oom)
    finally:
        if force:
            self.optimizer.scaler.loss_scale = forced[0]

original_save, saves = checkpoint_utils.save_checkpoint, []

def save_checkpoint(cfg, trainer, epoch_itr, val_loss):
    memory = trainer.get_model().decoder.get_stream_memory("train")
    name = os.path.join(cfg.save_dir, "save%d" % len(saves))
    torch.save({"num_updates": trainer.get_num_updates(), "position": epoch_itr.iterations_in_epoch,
                "mems": memory.to_checkpoint()}, name + "_rank%d.pt" % trainer.data_parallel_rank)
    saves.append(name)
    result = original_save(cfg, trainer, epoch_itr, val_loss)
    if trainer.data_parallel_rank == 0:
        shutil.copy(os.path.join(cfg.save_dir, "checkpoint_last.pt"), name + ".pt")
    return result

Trainer.train_step = train_step
checkpoint_utils.save_checkpoint = save_checkpoint
sys.argv = ["fairseq-train"] + sys.argv[1:]
train.cli_main()
"""


def test_a_save_repeated_after_an_fp16_overflow_holds_the_memory_of_both_ranks(data, tmp_path):
    """fairseq-train --fp16 in 2 processes, saving every 4 updates, --disable-validation: update 5
    overflows at its first attempt, so fairseq saves again "at 4 updates" with the streams one
    segment further (nothing runs on every rank in between). Every checkpoint, that one included,
    holds the position and the memory the two ranks had when it was written."""
    save_dir = tmp_path / "ck"
    out = torchrun(2, data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm", "--save-dir",
                   save_dir, *TINY, "--fp16", "--fp16-no-flatten-grads", "--tokens-per-sample", "8",
                   "--batch-size", "2", "--max-update", "6", "--save-interval-updates", "4",
                   "--disable-validation", "--no-epoch-checkpoints", "--distributed-backend",
                   "gloo", "--ddp-backend", "legacy_ddp",
                   program=[os.path.join(BIN, "python"), "-c", OVERFLOW_DRIVER])
    assert "gradient overflow detected" in out
    assert "was not gathered" not in out
    assert gathers(out) == [(4, "for the checkpoint"), (4, "in case this update overflows"),
                            (4, "in case this update overflows"), (6, "for the checkpoint")]
    live = [[torch.load(save_dir / f"save{i}_rank{r}.pt", weights_only=True) for r in (0, 1)]
            for i in range(3)]
    assert [(l0["num_updates"], l0["position"]) for l0, _ in live] == [(4, 4), (4, 5), (6, 7)]
    for i, ranks in enumerate(live):
        state = torch.load(save_dir / f"save{i}.pt", weights_only=True)["extra_state"]["train_iterator"]
        assert state["iterations_in_epoch"] == ranks[0]["position"]
        saved = state["stream_memory"]["mems"]
        assert saved[0].dtype == torch.float16 and saved[0].size(0) == 4
        for layer, m in enumerate(saved):
            assert torch.equal(m, torch.cat([r["mems"][layer] for r in ranks])), (i, layer)


def test_one_process_checkpoint_resumes_in_two_processes_with_the_same_streams(data, tmp_path):
    """Resuming mid-epoch needs the same number of streams, not the same number of processes:
    a checkpoint of 1 process x 4 streams continues under 2 processes x 2 streams (each rank takes
    its rows of the saved memory) with the losses of the uninterrupted 1-process run. (Another
    total number of streams is refused: test_bad_input_fails_with_one_clear_line.)"""
    common = ["--tokens-per-sample", "8", "--disable-validation", "--no-epoch-checkpoints",
              "--dropout", "0"]
    single = train(data, tmp_path / "w1", *common, "--batch-size", "4", "--max-update", "11",
                   "--save-interval-updates", "8")
    os.makedirs(tmp_path / "w2")
    shutil.copy(tmp_path / "w1" / "checkpoint_1_8.pt", tmp_path / "w2" / "checkpoint_last.pt")
    resumed = torchrun(2, data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm",
                       "--save-dir", tmp_path / "w2", *TINY, *common, "--batch-size", "2",
                       "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
                       "--max-update", "11")
    assert "restored the memory of streams 0-1 at step 8" in resumed
    expected, got = losses(single), losses(resumed)
    assert sorted(got) == [9, 10, 11]
    for u in got:
        assert got[u] == pytest.approx(expected[u], abs=2e-3), u


# ---------------------------------------------------------------- fairseq-eval-lm
@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("ckpt")
    train(data, save_dir, "--tokens-per-sample", "8", "--batch-size", "4", "--max-update", "3",
          "--disable-validation", "--no-epoch-checkpoints")
    return os.path.join(save_dir, "checkpoint_last.pt")


def eval_lm(data, checkpoint, *args, check=True):
    return run("fairseq-eval-lm", data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm",
               "--path", checkpoint, "--cpu", "--gen-subset", "test", *args, check=check)


def test_eval_lm_scores_every_token_once_in_order(data, checkpoint):
    """61 test words + 9 eos = 70 tokens in 3 streams (24, 23, 23) of 5-token steps; with
    --output-word-probs fairseq-eval-lm prints each row's scored targets, tagged with the sample id
    (step * 3 + stream): concatenated per stream they must give back the test split exactly."""
    out = eval_lm(data, checkpoint, "--tokens-per-sample", "5", "--batch-size", "3",
                  "--output-word-probs", "--model-overrides", "{'mem_len': 12}")
    expected = split_tokens("test", SIZES["test"])
    summary, word_probs = parse_eval_lm(out), parse_word_probs(out)
    assert summary["tokens"] == len(expected)
    per_stream = {0: [], 1: [], 2: []}
    for sample_id, words in word_probs.items():
        per_stream[sample_id % 3].append((sample_id // 3, words))
    scored = []
    for stream in range(3):
        steps = sorted(per_stream[stream])
        assert [s for s, _ in steps] == list(range(len(steps)))
        scored += [w for _, words in steps for w in words]
    assert [w for w, _ in scored] == expected
    # The reported loss is the mean of exactly these token scores (natural log, printed to 6
    # decimals; the loss in base 2 to 4), and the perplexity is 2 ** loss.
    mean_nll = -sum(lp for _, lp in scored) / len(scored) / math.log(2)
    assert summary["loss"] == pytest.approx(mean_nll, abs=1e-4)
    assert summary["ppl"] == pytest.approx(2 ** summary["loss"], rel=1e-4)


def test_eval_lm_refuses_context_window(data, checkpoint):
    proc = eval_lm(data, checkpoint, "--tokens-per-sample", "8", "--context-window", "4",
                   check=False)
    assert proc.returncode != 0
    assert "--context-window does not apply to truncated_bptt_lm" in proc.stdout
    assert "mem_len" in proc.stdout.strip().splitlines()[-1]


# ---------------------------------------------------------------- bad input
def last_line(proc):
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory):
    """Corner cases from one fairseq-preprocess run: a 3-token valid split, an empty test split,
    a copy without dictionary, a copy whose dictionary differs."""
    root = tmp_path_factory.mktemp("odd")
    text = root / "text"
    write_lines(str(text / "train.txt"), corpus_text("train", 40))
    write_lines(str(text / "valid.txt"), corpus_text("valid", 2))
    write_lines(str(text / "test.txt"), [])
    good = str(root / "good")
    preprocess(str(text), good)
    no_dict, other = str(root / "no_dict"), str(root / "other")
    shutil.copytree(good, no_dict)
    os.remove(os.path.join(no_dict, "dict.txt"))
    shutil.copytree(good, other)
    with open(os.path.join(other, "dict.txt"), "a", encoding="utf-8") as f:
        f.write("extra 1\n")
    return {"good": good, "no_dict": no_dict, "sharded": f"{good}:{other}",
            "missing": str(root / "nowhere")}


BAD_INPUT = [
    ("missing", ["--batch-size", "1"], "does not exist: pass the --destdir of fairseq-preprocess"),
    ("no_dict", ["--batch-size", "1"], "no dictionary"),
    ("good", ["--batch-size", "1", "--valid-subset", "dev"], "split 'dev' not found"),
    ("good", ["--batch-size", "1", "--train-subset", "test"], "split 'test' in"),
    ("good", ["--batch-size", "4"], "split 'valid' has 3 tokens, fewer than its 4 streams"),
    ("good", ["--max-tokens", "64"], "set --batch-size"),
    ("good", ["--batch-size", "1", "--tokens-per-sample", "0"], "--tokens-per-sample must be positive"),
    ("sharded", ["--batch-size", "1"], "differs from that of"),
    ("good", ["--batch-size", "0"], "--batch-size must be a positive number of streams per GPU (got 0)"),
    ("good", ["--batch-size", "1", "--valid-subset", "valid,train"],
     "--valid-subset includes the training split 'train': the model keeps one memory per split"),
]

# Runs fairseq-train's / fairseq-eval-lm's entry point (what the console scripts call) once per
# case in one process, to pay fairseq's import time once; prints one JSON line per case.
DRIVER = """
import json, sys
from fairseq_cli import eval_lm, train
for tool, argv in json.loads(sys.argv[1]):
    sys.argv = ["fairseq-" + tool.replace("_", "-")] + argv
    try:
        {"train": train, "eval_lm": eval_lm}[tool].cli_main()
        result = {"error": None}
    except BaseException as e:
        result = {"type": type(e).__name__, "error": str(e)}
    print("RESULT " + json.dumps(result), flush=True)
"""


def bad_input_argv(odd_data, tmp_path, case, args):
    return [odd_data[case], "--user-dir", USER_DIR, "--task", "truncated_bptt_lm", "--save-dir",
            str(tmp_path / "ck"), *TINY, "--tokens-per-sample", "4", "--max-update", "1", *args]


def damaged_checkpoints(checkpoint, root):
    """Beside an intact copy of ``checkpoint``, an interrupted copy of it (``incomplete/``); and a
    copy with a flipped data byte (``flipped.pt``). More cases: tests/test_checkpoint_integrity.py"""
    with open(checkpoint, "rb") as f:
        data = bytearray(f.read())
    os.makedirs(root / "incomplete")
    with open(root / "incomplete" / "checkpoint_last.pt", "wb") as f:
        f.write(data[: len(data) // 2])
    shutil.copy(checkpoint, root / "incomplete" / "checkpoint_1_3.pt")
    data[len(data) // 2] ^= 0xFF  # inside the tensors' data
    with open(root / "flipped.pt", "wb") as f:
        f.write(data)


def resume_and_eval_cases(data, checkpoint, other_data, tmp_path):
    """(tool, argv, message) for resuming and scoring with wrong inputs. ``checkpoint`` stopped
    mid-epoch (step 3) with --tokens-per-sample 8 and 4 streams."""
    damaged_checkpoints(checkpoint, tmp_path)
    train_args = [data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm", *TINY,
                  "--max-update", "5", "--disable-validation", "--save-dir", str(tmp_path / "ck")]
    restore = ["--restore-file", checkpoint]
    incomplete = str(tmp_path / "incomplete" / "checkpoint_last.pt")
    eval_args = [data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm", "--cpu",
                 "--gen-subset", "test", "--tokens-per-sample", "8", "--path"]

    return [
        ("train", [*train_args, *restore, "--tokens-per-sample", "4", "--batch-size", "4"],
         "the checkpoint stopped mid-epoch (step 3) in another stream layout than this run's "
         "(--tokens-per-sample 8 -> 4), so its position and memory would not match the text: "
         "resume with --tokens-per-sample 8, or pass --reset-dataloader"),
        ("train", [*train_args, *restore, "--tokens-per-sample", "8", "--batch-size", "2"],
         "(number of streams 4 -> 2), so its position and memory would not match the text: resume "
         "with 4 streams in all (--batch-size x number of processes = 4)"),
        ("train", [*train_args, "--restore-file", incomplete, "--tokens-per-sample", "8",
                   "--batch-size", "4"],
         f"checkpoint {incomplete} is incomplete ("),
        ("train", [*train_args, "--restore-file", str(tmp_path / "incomplete" / "pretrained.pt"),
                   "--tokens-per-sample", "8", "--batch-size", "4"],
         "pretrained.pt does not exist (intact checkpoints in %s: checkpoint_1_3.pt), so fairseq "
         "would silently train from scratch" % (tmp_path / "incomplete")),
        ("eval_lm", [*eval_args, incomplete],
         "the end of the file is missing, as after an interrupted write or copy): intact "
         "checkpoints beside it, newest first: checkpoint_1_3.pt; pass one of them to --path"),
        ("eval_lm", [*eval_args, str(tmp_path / "flipped.pt")], "fails its CRC-32 check"),
        ("eval_lm", [other_data, *eval_args[1:], checkpoint],
         f"the checkpoint's model has a vocabulary of {dictionary_size(data)} types but "
         f"{other_data}/dict.txt has {dictionary_size(other_data)}: use the data directory the "
         "model was trained on"),
        ("eval_lm", [*eval_args, checkpoint, "--gen-subset", "dev"], "split 'dev' not found"),
        # the other kinds of wrong --model-overrides: tests/test_model_overrides.py
        ("eval_lm", [*eval_args, checkpoint, "--model-overrides", "{'memlen': 64}"],
         "did you mean 'mem_len'?"),
    ]


def dictionary_size(data):
    from fairseq.data import Dictionary

    return len(Dictionary.load(os.path.join(data, "dict.txt")))


def test_bad_input_fails_with_one_clear_line(odd_data, data, checkpoint, tmp_path):
    cases = [("train", bad_input_argv(odd_data, tmp_path, case, args), message)
             for case, args, message in BAD_INPUT]
    cases += resume_and_eval_cases(data, checkpoint, odd_data["good"], tmp_path)
    proc = subprocess.run([os.path.join(BIN, "python"), "-c", DRIVER,
                           json.dumps([[tool, argv] for tool, argv, _ in cases])],
                          env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600)
    results = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines()
               if line.startswith("RESULT ")]
    assert len(results) == len(cases), proc.stdout[-3000:]
    for (tool, argv, message), result in zip(cases, results):
        assert result.get("type") in ("ValueError", "FileNotFoundError"), (tool, argv, result)
        assert message in result["error"] and "\n" not in result["error"], (tool, argv, result)


def test_bad_input_message_ends_the_console_output(odd_data, tmp_path):
    proc = train(odd_data["good"], tmp_path / "ck", "--tokens-per-sample", "4", "--max-tokens",
                 "64", check=False)
    assert proc.returncode != 0
    assert "set --batch-size" in last_line(proc) and last_line(proc).startswith("ValueError: ")


def test_streams_are_read_in_the_main_process_whatever_num_workers_says(tmp_path):
    """fairseq's default --num-workers 1 would start a worker process that only competes with the
    model for the CPU: stream batches are slices of a tensor in memory."""
    from inference_models import binarize, make_dictionary_dir, tiny_model

    data = binarize(make_dictionary_dir(str(tmp_path / "dict")), str(tmp_path / "data"), "test",
                    ["w1 w2 w3 w4 w5 w6 w7 w8 w9"] * 4)
    _, task, _ = tiny_model(data)
    task.load_dataset("test")
    iterator = task.get_batch_iterator(task.dataset("test"), max_sentences=2, num_workers=2,
                                       data_buffer_size=10)
    assert (iterator.num_workers, iterator.buffer_size) == (0, 0)
    batches = list(iterator.next_epoch_itr(shuffle=False))
    assert [b["net_input"]["segment_index"] for b in batches] == list(range(len(batches)))
