"""examples/large_corpus: one text split into shards binarized in parallel with one dictionary, and
training over ``shard0:shard1:shard2``: each epoch streams the whole next shard in order, and a run
stopped in the middle of a shard resumes exactly (the real fairseq-train)."""
import os
import re
import shutil
import sys

import pytest
import torch
from fairseq.data import Dictionary, data_utils

from examples.fairseq_logs import parse_training_log
from fairseq_commands import ROOT, USER_DIR, run, write_lines
from truncated_bptt.truncated_bptt_lm_task import TruncatedBPTTLMConfig, TruncatedBPTTLMTask

# One worker builds the module's corpus and model once (scripts/test.sh: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("sharded_corpus")

SCRIPT = os.path.join(ROOT, "examples", "large_corpus", "shard_and_binarize.py")
WORDS = [f"w{i}" for i in range(24)]


def _lines(n, seed):
    return [" ".join(WORDS[(seed + 5 * i + j) % len(WORDS)] for j in range(3 + (i + seed) % 5))
            for i in range(n)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    lines = _lines(150, 0)
    write_lines(str(root / "big.txt"), lines)
    write_lines(str(root / "valid.txt"), _lines(20, 1))
    write_lines(str(root / "test.txt"), _lines(20, 2))
    out = run(sys.executable, SCRIPT, "--train", root / "big.txt", "--valid", root / "valid.txt",
              "--test", root / "test.txt", "--destdir", root / "data-bin", "--shards", 3,
              "--jobs", 2)
    dirs = [str(root / "data-bin" / f"shard{k}") for k in range(3)]
    assert f"train on {':'.join(dirs)}" in out, out[-3000:]
    return root, lines, dirs


def _train_lines(shard_dir):
    d = Dictionary.load(os.path.join(shard_dir, "dict.txt"))
    return [d.string(line[:-1]) for line in data_utils.load_indexed_dataset(
        os.path.join(shard_dir, "train"), d)]


def test_shards_hold_the_text_in_order_with_one_dictionary(shards):
    root, lines, dirs = shards
    pieces = [_train_lines(d) for d in dirs]
    assert sum(pieces, []) == lines  # nothing lost, nothing repeated, order kept
    assert all(35 <= len(p) <= 65 for p in pieces)  # about a third each
    dictionary = (root / "data-bin" / "dict.txt").read_text()
    assert all(open(os.path.join(d, "dict.txt")).read() == dictionary for d in dirs)
    assert os.path.exists(os.path.join(dirs[0], "valid.bin"))
    assert os.path.exists(os.path.join(dirs[0], "test.bin"))
    assert not any(os.path.exists(os.path.join(d, "valid.bin")) for d in dirs[1:])
    assert not (root / "data-bin" / "text").exists()  # the shards' text is removed
    # the README's `ls -d DESTDIR/shard* | paste -sd:` lists exactly the shards
    assert sorted(str(p) for p in (root / "data-bin").glob("shard*")) == dirs


def test_each_epoch_streams_its_whole_shard_in_order(shards):
    """Epoch e reads shard (e - 1) mod 3: every stream is a contiguous run of that shard's tokens,
    all tokens once, and the first step of every epoch starts the memory afresh (segment 0)."""
    _, _, dirs = shards
    task = TruncatedBPTTLMTask.setup_task(TruncatedBPTTLMConfig(data=":".join(dirs),
                                                                tokens_per_sample=8))
    for epoch in range(1, 5):
        task.load_dataset("train", epoch=epoch)
        expected = task.dataset("train").tokens.long()
        shard = dirs[(epoch - 1) % 3]
        d = task.dictionary
        assert d.string(expected[expected != d.eos()]).split() == \
            " ".join(_train_lines(shard)).split()
        batches = list(task.get_batch_iterator(task.dataset("train"), max_sentences=2,
                                               epoch=epoch).next_epoch_itr(shuffle=False))
        assert batches[0]["net_input"]["segment_index"] == 0
        streams = torch.cat([b["target"] for b in batches], dim=1)  # [2, steps * 8]
        half = (expected.numel() + 1) // 2
        assert streams[0, :half].tolist() == expected[:half].tolist()
        assert streams[1][streams[1] != d.pad()].tolist() == expected[half:].tolist()


def _losses(log):
    return [(int(r["num_updates"]), r["loss"]) for r in parse_training_log(log)["train"]]


def test_training_over_shards_resumes_mid_shard_exactly(shards, tmp_path):
    _, _, dirs = shards
    data = ":".join(dirs)

    def train(save_dir, max_update):
        return run("fairseq-train", data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm",
                   "--tokens-per-sample", 8, "--batch-size", 2, "--arch", "transformer_xl",
                   "--n-layer", 1, "--d-model", 16, "--n-head", 2, "--d-head", 8, "--d-inner", 32,
                   "--mem-len", 8, "--cutoffs", "1000", "--optimizer", "adam", "--lr", 0.003,
                   "--max-epoch", 4, "--max-update", max_update, "--seed", 1, "--cpu",
                   "--log-format", "json", "--log-interval", 1, "--save-dir", save_dir,
                   "--save-interval-updates", 5, "--no-epoch-checkpoints",
                   "--disable-validation")

    full = train(tmp_path / "a", 10_000)
    # one shard per epoch, in order, wrapping around (fairseq loads the next epoch's shard as each
    # epoch ends, the last one included)
    loaded = re.findall(r"train: [\d,]+ tokens from (\S+)/train", full)
    assert [os.path.basename(p) for p in loaded] == ["shard0", "shard1", "shard2", "shard0",
                                                     "shard1"]
    reference = _losses(full)
    per_epoch = [int(r["num_updates"]) for r in parse_training_log(full)["epoch"]]
    assert len(per_epoch) == 4 and reference[-1][0] == per_epoch[-1]
    stop = per_epoch[0] + (per_epoch[1] - per_epoch[0]) // 2 // 5 * 5  # a checkpoint in shard1
    assert per_epoch[0] < stop < per_epoch[1]

    # the run's own checkpoint of update `stop` (epoch 2) as the last checkpoint of a new run
    os.makedirs(tmp_path / "b")
    shutil.copyfile(tmp_path / "a" / f"checkpoint_2_{stop}.pt", tmp_path / "b" / "checkpoint_last.pt")
    resumed = train(tmp_path / "b", 10_000)  # restarts in the middle of shard1
    assert "shard1/train" in resumed.split("train_inner")[0]
    assert _losses(resumed) == [r for r in reference if r[0] > stop]
