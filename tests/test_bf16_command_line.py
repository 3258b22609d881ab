"""--bf16 / --memory-efficient-bf16 from fairseq's command line (which turns them into --tpu)."""
import importlib.util

import pytest
import torch

from examples.fairseq_logs import parse_eval_lm, parse_word_probs
from fairseq_commands import USER_DIR, preprocess, run, write_lines

COMMON = ["--user-dir", USER_DIR, "--task", "truncated_bptt_lm", "--tokens-per-sample", "16",
          "--batch-size", "4", "--cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    words = [f"w{i}" for i in range(40)]
    lines = [" ".join(words[(7 * i + j) % 40] for j in range(10)) for i in range(200)]
    write_lines(str(root / "text" / "train.txt"), lines)
    write_lines(str(root / "text" / "valid.txt"), lines[:20])
    preprocess(str(root / "text"), str(root / "data"), splits=("train", "valid"))
    return str(root / "data")


@pytest.mark.parametrize("flag,optimizer", [("--bf16", "FP16Optimizer"),
                                            ("--memory-efficient-bf16", "MemoryEfficientFP16Optimizer")])
def test_fairseq_train_and_eval_lm_in_bf16(data, tmp_path, flag, optimizer):
    save_dir = tmp_path / "ckpt"
    log = run("fairseq-train", data, *COMMON, "--arch", "transformer_xl_tiny", "--optimizer", "adam",
              "--lr", "0.003", "--max-update", "12", flag, "--save-dir", save_dir,
              "--no-epoch-checkpoints")
    assert "ignoring the --tpu that fairseq's command line derives from --bf16" in log
    state = torch.load(save_dir / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    # fairseq's half-precision wrapper ran (bf16 model, fp32 master weights or state)...
    assert state["optimizer_history"][-1]["optimizer_name"] == optimizer
    # ...and no part of the run believed it was on a TPU
    assert all(group.get("tpu", False) is False for group in state["cfg"].values()
               if isinstance(group, dict))
    if flag != "--bf16":
        return  # the scoring below does not depend on how the model was trained
    scores, word_log_probs = {}, {}
    for dtype in ("fp32", "bf16"):
        out = run("fairseq-eval-lm", data, *COMMON, "--path", save_dir / "checkpoint_last.pt",
                  "--gen-subset", "valid", "--output-word-probs",
                  *(["--bf16"] if dtype == "bf16" else []))
        scores[dtype] = parse_eval_lm(out)["loss"]
        word_log_probs[dtype] = [lp for _, words in sorted(parse_word_probs(out).items())
                                 for _, lp in words]
    # eval-lm really scored in bf16: the words' log-probabilities (printed to 6 decimals) differ.
    # (Not the 4-decimal loss: averaged over this tiny split, it can round alike in both.)
    fp32, bf16 = word_log_probs["fp32"], word_log_probs["bf16"]
    assert len(fp32) == len(bf16) > 100
    assert sum(a != b for a, b in zip(fp32, bf16)) > len(fp32) // 2
    assert abs(scores["bf16"] - scores["fp32"]) < 0.02 * scores["fp32"]  # and agree to bf16 precision


def test_nothing_is_wrapped_where_torch_xla_is_installed(monkeypatch):
    from fairseq.distributed import utils as distributed_utils

    from truncated_bptt import bf16_command_line

    original = distributed_utils.call_main
    monkeypatch.setattr(distributed_utils, "call_main", lambda cfg, main, **kwargs: None)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "torch_xla" else real_find_spec(name, *a))
    unwrapped = distributed_utils.call_main
    bf16_command_line.install()
    assert distributed_utils.call_main is unwrapped
    assert getattr(original, "undoes_bf16_tpu", False)  # the plugin's import did wrap it here
