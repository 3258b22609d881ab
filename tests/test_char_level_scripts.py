"""examples/char_level: an enwik8-like (and a text8-like) corpus made here -> prepare.py ->
fairseq-train -> fairseq-eval-lm in bits per character -> fairseq-generate / -interactive printing
text, all through the real CLIs."""
import os
import random
import sys
import zipfile

import pytest
from fairseq.data import Dictionary, data_utils
from fairseq.data.encoders.byte_utils import BCHAR_TO_BYTE

from examples.fairseq_logs import parse_eval_lm
from fairseq_commands import ROOT, USER_DIR, run

# One worker builds the module's corpus and model once (scripts/test.sh: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("char_level_corpus")

PREPARE = os.path.join(ROOT, "examples", "char_level", "prepare.py")
HELDOUT = 2000
WORDS = "page title revision text the of and in a to is was for on".split() + ["café", "漢字"]


def _wiki_bytes(n_lines, seed):
    """XML-ish lines with UTF-8 characters and tabs; no newline at the very end."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        tag = rng.choice(["page", "title", "text"])
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
        lines.append(f"  <{tag}>{body}</{tag}>" + ("\t" if i % 7 == 0 else ""))
    return "\n".join(lines).encode("utf-8")


@pytest.fixture(scope="module")
def enwik(tmp_path_factory):
    root = tmp_path_factory.mktemp("chars")
    raw = _wiki_bytes(600, 0)
    with zipfile.ZipFile(root / "enwik8.zip", "w") as z:  # as distributed: one member
        z.writestr("enwik8", raw)
    out = run(sys.executable, PREPARE, root / "enwik8.zip", "--destdir", root / "data-bin",
              "--heldout", HELDOUT, "--workers", 1)
    assert "done" in out, out[-3000:]
    run("fairseq-train", root / "data-bin", "--user-dir", USER_DIR, "--task", "truncated_bptt_lm",
        "--tokens-per-sample", 64, "--batch-size", 4, "--arch", "transformer_xl",
        "--n-layer", 2, "--d-model", 32, "--n-head", 2, "--d-head", 16, "--d-inner", 64,
        "--mem-len", 64, "--cutoffs", "1000", "--optimizer", "adam", "--lr", 0.01,
        "--max-update", 40, "--seed", 1, "--cpu", "--save-dir", root / "ckpt",
        "--no-epoch-checkpoints", "--disable-validation")
    return root, raw


def _split_bytes(data_dir, split):
    """The split's bytes, read back from the binarized data with fairseq's own byte table."""
    d = Dictionary.load(os.path.join(data_dir, "dict.txt"))
    lines = data_utils.load_indexed_dataset(os.path.join(data_dir, split), d)
    to_byte = dict(BCHAR_TO_BYTE, **{"▁": 32})
    return b"\n".join(bytes(to_byte[d[i]] for i in line[:-1].tolist()) for line in lines)


def test_prepare_makes_the_standard_split_one_token_per_byte(enwik):
    root, raw = enwik
    data = root / "data-bin"
    assert _split_bytes(data, "train") == raw[:-2 * HELDOUT]
    assert _split_bytes(data, "valid") == raw[-2 * HELDOUT:-HELDOUT]
    assert _split_bytes(data, "test") == raw[-HELDOUT:]
    symbols = {line.rsplit(" ", 1)[0] for line in (data / "dict.txt").read_text().splitlines()}
    assert len(symbols) == len(set(raw) - {10})  # every byte value of any split but newline


def test_eval_lm_scores_every_byte_once_in_bits(enwik):
    root, raw = enwik
    out = run("fairseq-eval-lm", root / "data-bin", "--user-dir", USER_DIR, "--task",
              "truncated_bptt_lm", "--path", root / "ckpt" / "checkpoint_last.pt", "--gen-subset",
              "test", "--batch-size", 1, "--tokens-per-sample", 32, "--model-overrides",
              "{'mem_len': 128, 'clamp_len': 64, 'same_length': True}", "--cpu")
    # every byte of the test split, plus the </s> that ends its last (newline-less) line
    scored = parse_eval_lm(out)
    assert scored["tokens"] == 2001, out[-3000:]
    bpc = scored["loss"]
    n_symbols = len(set(raw) - {10}) + 4
    assert bpc < 0.6 * n_symbols.bit_length()  # trained: far below a uniform guess


def _lines_starting(out, prefix):
    return {line.split("\t")[0][len(prefix):]: line.split("\t")
            for line in out.splitlines() if line.startswith(prefix)}


def test_generate_and_interactive_read_and_print_text(enwik):
    root, _ = enwik
    common = [root / "data-bin", "--user-dir", USER_DIR, "--task", "truncated_bptt_lm", "--path",
              root / "ckpt" / "checkpoint_last.pt", "--cpu", "--beam", 1, "--max-len-b", 20,
              "--bpe", "byte_tokens"]
    prompts = root / "prompts.txt"
    prompts.write_text("<page>café\n<title>漢字 the\n", encoding="utf-8")
    out = run("fairseq-interactive", *common, "--input", prompts)
    detok, hypos = _lines_starting(out, "D-"), _lines_starting(out, "H-")
    assert detok["0"][2].startswith("<page>café"), out[-3000:]
    assert detok["1"][2].startswith("<title>漢字 the"), out[-3000:]
    assert "▁" in hypos["1"][2] and "é" not in hypos["0"][2]  # tokens are bytes, D- is text

    out = run("fairseq-generate", *common, "--gen-subset", "test", "--batch-size", 1,
              "--tokens-per-sample", 256)
    hypos, detok = _lines_starting(out, "H-"), _lines_starting(out, "D-")
    assert len(hypos) >= 3 and set(detok) == set(hypos), out[-3000:]
    assert all("▁" not in fields[2] for fields in detok.values())
    assert sum(" " in fields[2] for fields in detok.values()) >= 2


def test_prepare_text8_layout_from_the_file_itself(tmp_path):
    """text8: one line of lowercase letters and spaces; each split stays one line."""
    rng = random.Random(1)
    text = " ".join(rng.choice("anarchism originated as a term of abuse".split()) for _ in range(2000))
    (tmp_path / "text8").write_text(text)
    out = run(sys.executable, PREPARE, tmp_path / "text8", "--destdir", tmp_path / "data-bin",
              "--heldout", 1000, "--workers", 1)
    n_train = len(text) - 2000
    assert f"train: {n_train:,} bytes -> {n_train + 1:,} tokens" in out, out[-3000:]
    assert _split_bytes(tmp_path / "data-bin", "test") == text[-1000:].encode()
    symbols = {line.split()[0] for line in (tmp_path / "data-bin" / "dict.txt").read_text().splitlines()}
    assert symbols == set(text.replace(" ", "▁"))
