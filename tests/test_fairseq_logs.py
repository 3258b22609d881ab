"""examples/fairseq_logs.py and the plotting scripts, on log lines fairseq really writes."""
import pytest

from examples import fairseq_logs, mem_len_sweep, plot_training_curves

# Lines as fairseq-train (plain logging) and fairseq-hydra-train (hydra's format) print them.
SIMPLE = """\
2026-11-21 22:10:24 | INFO | train_inner | epoch 001:     50 / 196 loss=9.034, ppl=524.06, wps=7401.7, ups=7.23, wpb=1024, bsz=16, num_updates=50, lr=0.0015, gnorm=1.306, clip=100, train_wall=7, wall=9
2026-11-21 22:10:39 | INFO | fairseq_cli.train | begin validation on "valid" subset
2026-11-21 22:10:39 | INFO | valid | epoch 001 | valid on 'valid' subset | loss 4.339 | ppl 20.24 | wps 31941.9 | wpb 1010 | bsz 16 | num_updates 196
2026-11-21 22:10:40 | INFO | train | epoch 001 | loss 6.417 | ppl 85.42 | wps 5402.9 | ups 5.29 | wpb 1020.7 | bsz 16 | num_updates 196 | lr 0.00263411
[2026-11-21 22:29:07,931][train_inner][INFO] - epoch 001:      2 / 196 loss=10.012, ppl=1032.57, wps=4785.8, ups=4.67, wpb=1024, bsz=16, num_updates=200, lr=6e-05, gnorm=0.874, clip=100, train_wall=0, wall=8
[2026-11-21 22:29:09,101][train][INFO] - epoch 002 | loss 5.512 | ppl 45.63 | wps 5102.2 | ups 4.98 | wpb 1020.7 | bsz 16 | num_updates 392 | lr 0.00211 | gnorm 0.61 | clip 100 | train_wall 38 | wall 80
"""
JSON = """\
[2026-11-21 22:08:36,904][train_inner][INFO] - {"epoch": 1, "update": 0.008, "loss": "5.945", "ppl": "61.61", "wps": "1096.8", "num_updates": "2", "lr": "0.0005"}
[2026-11-21 22:08:37,307][valid][INFO] - {"epoch": 1, "valid_loss": "5.82", "valid_ppl": "56.49", "valid_wps": "2920.3", "valid_num_updates": "2"}
{"epoch": 1, "train_loss": "5.869", "train_ppl": "58.44", "train_num_updates": "4"}
2026-11-21 22:10:24 | INFO | train_inner | {"epoch": 1, "update": 0.015, "loss": "5.792", "ppl": "55.42", "num_updates": "4", "lr": "0.0001"}
"""


def _write(tmp_path, text):
    path = tmp_path / "train.log"
    path.write_text(text)
    return str(path)


def test_simple_format(tmp_path):
    records = fairseq_logs.read_training_log(_write(tmp_path, SIMPLE))
    assert [(r["num_updates"], r["ppl"]) for r in records["train"]] == [(50, 524.06), (200, 1032.57)]
    assert records["train"][0]["lr"] == 0.0015
    assert [(r["num_updates"], r["loss"], r["subset"]) for r in records["valid"]] == [
        (196, 4.339, "valid")]
    assert [(r["num_updates"], r["loss"]) for r in records["epoch"]] == [(196, 6.417), (392, 5.512)]
    assert fairseq_logs.final_update(records) == 392


def test_json_format(tmp_path):
    records = fairseq_logs.read_training_log(_write(tmp_path, JSON))
    assert [(r["num_updates"], r["ppl"]) for r in records["train"]] == [(2, 61.61), (4, 55.42)]
    assert [(r["num_updates"], r["ppl"]) for r in records["valid"]] == [(2, 56.49)]
    assert [(r["num_updates"], r["loss"]) for r in records["epoch"]] == [(4, 5.869)]
    assert records == fairseq_logs.parse_training_log(JSON)  # a file or the text itself


def test_values_by_update_and_final_update():
    records = fairseq_logs.parse_training_log(SIMPLE + JSON)
    assert fairseq_logs.by_update(records["train"]) == {50: 9.034, 200: 10.012, 2: 5.945, 4: 5.792}
    assert fairseq_logs.by_update(records["train"], "lr") == {50: 0.0015, 200: 6e-05, 2: 0.0005,
                                                              4: 0.0001}
    assert fairseq_logs.by_update(records["valid"], "ppl") == {196: 20.24, 2: 56.49}
    assert fairseq_logs.final_update(records) == 392
    with pytest.raises(ValueError, match="no training, validation or epoch record"):
        fairseq_logs.final_update(fairseq_logs.parse_training_log("Traceback ..."))


def test_eval_lm_summary():
    out = ("... | fairseq_cli.eval_lm | Evaluated 245,569 tokens in 83.1s (2956.82 tokens/s)\n"
           "... | fairseq_cli.eval_lm | Loss (base 2): 4.5668, Perplexity: 23.70\n")
    assert fairseq_logs.parse_eval_lm(out) == {
        "loss": 4.5668, "ppl": 23.70, "tokens": 245569, "seconds": pytest.approx(245569 / 2956.82),
        "tokens_per_s": 2956.82}
    with pytest.raises(ValueError, match="Perplexity"):
        fairseq_logs.parse_eval_lm("crashed")
    with pytest.raises(ValueError, match="Evaluated N tokens"):
        fairseq_logs.parse_eval_lm(out.splitlines()[1])


def test_word_probs():
    out = ("2026-11-21 22:10:24 | INFO | fairseq_cli.eval_lm | 4 v0 [-6.440215]\tv1 [-0.5]\t"
           "</s> [-1e-05]\n"
           "2026-11-21 22:10:24 | INFO | fairseq_cli.eval_lm | num. model params: 1,234\n"
           "INFO:fairseq_cli.eval_lm:0 e0 [-7.000000]\n"
           "2026-11-21 22:10:25 | INFO | fairseq_cli.eval_lm | 4 v2 [-2.25]\n")
    assert fairseq_logs.parse_word_probs(out) == {
        4: [("v0", -6.440215), ("v1", -0.5), ("</s>", -1e-05), ("v2", -2.25)], 0: [("e0", -7.0)]}


def test_plots_are_pngs(tmp_path):
    log = _write(tmp_path, SIMPLE + JSON)
    out = tmp_path / "curves.png"
    plot_training_curves.main([log, "--labels", "run", "--out", str(out)])
    sweep_png = mem_len_sweep.plot_sweep(
        [{"mem_len": 0, "ppl": 30.0, "loss": 4.9}, {"mem_len": 64, "ppl": 20.0, "loss": 4.3}],
        str(tmp_path / "sweep.png"), train_mem_len=64)
    for png in (out, sweep_png):
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no training or validation records"):
        plot_training_curves.plot_training_curves({"x": {"train": [], "valid": []}},
                                                  str(tmp_path / "empty.png"))


def test_sweep_command_sets_same_length_only_with_memory():
    cmd0 = mem_len_sweep.eval_lm_command("data", "ck.pt", 0, 64, clamp_len=400, same_length=True)
    cmd = mem_len_sweep.eval_lm_command("data", "ck.pt", 640, 64, clamp_len=400, same_length=True)
    assert cmd0[cmd0.index("--model-overrides") + 1] == "{'mem_len': 0, 'clamp_len': 400}"
    assert cmd[cmd.index("--model-overrides") + 1] == \
        "{'mem_len': 640, 'clamp_len': 400, 'same_length': True}"
    assert cmd[cmd.index("--task") + 1] == "truncated_bptt_lm"
    assert cmd[cmd.index("--tokens-per-sample") + 1] == "64"


def test_json_validation_records_of_every_subset(tmp_path):
    log = JSON + ('[2026-11-21 22:08:37,512][test][INFO] - {"epoch": 1, "test_loss": "5.9", '
                  '"test_ppl": "59.71", "test_num_updates": "2"}\n')
    records = fairseq_logs.read_training_log(_write(tmp_path, log))
    assert [(r["subset"], r["num_updates"], r["ppl"]) for r in records["valid"]] == [
        ("valid", 2, 56.49), ("test", 2, 59.71)]
    assert [r["num_updates"] for r in records["train"]] == [2, 4]  # ("train_loss": epoch records)


def test_tensorboard_dir_as_fairseq_writes_it(tmp_path):
    """Events written by fairseq's own tensorboard progress-bar wrapper, read back as records."""
    from fairseq.logging import progress_bar

    logdir = str(tmp_path / "tb")
    bar = progress_bar.progress_bar([], log_format="none", tensorboard_logdir=logdir)
    for step, loss in ((1, 6.0), (2, 5.5)):
        bar.log({"loss": loss, "ppl": 2 ** loss, "num_updates": step}, tag="train_inner", step=step)
    bar.print({"loss": 5.25, "ppl": 2 ** 5.25, "num_updates": 2}, tag="valid", step=2)
    bar.print({"loss": 5.75, "ppl": 2 ** 5.75, "num_updates": 2}, tag="test", step=2)
    bar.print({"loss": 5.7, "ppl": 2 ** 5.7, "num_updates": 2}, tag="train", step=2)  # epoch average
    progress_bar._close_writers()  # fairseq keeps its writers per tag, process-wide
    progress_bar._tensorboard_writers.clear()
    assert fairseq_logs.is_tensorboard_dir(logdir)
    assert not fairseq_logs.is_tensorboard_dir(str(tmp_path / "missing"))
    records = fairseq_logs.read_tensorboard_dir(logdir)
    assert [(r["num_updates"], r["loss"]) for r in records["train"]] == [(1, 6.0), (2, 5.5)]
    assert [(r["subset"], r["num_updates"], r["loss"]) for r in records["valid"]] == [
        ("valid", 2, 5.25), ("test", 2, 5.75)]
    assert records["valid"][0]["ppl"] == pytest.approx(2 ** 5.25)


def test_eval_lm_summary_with_per_word_figures():
    out = ("... | truncated_bptt.word_perplexity | Word-level loss (base 2): 6.1234, word-level "
           "perplexity: 69.73 (sentencepiece pieces merged: 1,234 words incl. one </s> per line, "
           "over 5,678 scored tokens)\n"
           "... | fairseq_cli.eval_lm | Evaluated 5,678 tokens in 3.1s (1831.61 tokens/s)\n"
           "... | fairseq_cli.eval_lm | Loss (base 2): 1.3307, Perplexity: 2.52\n")
    assert fairseq_logs.parse_eval_lm(out) == {"loss": 1.3307, "ppl": 2.52, "tokens": 5678,
                                               "seconds": pytest.approx(5678 / 1831.61),
                                               "tokens_per_s": 1831.61, "word_loss": 6.1234,
                                               "word_ppl": 69.73, "words": 1234, "pieces": 5678}
