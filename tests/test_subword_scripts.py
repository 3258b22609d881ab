"""examples/subword: sentencepiece corpus -> fairseq-train -> fairseq-eval-lm with per-word figures
-> fairseq-generate / fairseq-interactive printing decoded text, all through the real CLIs."""
import os
import random
import sys

import pytest
import sentencepiece as spm

from examples.fairseq_logs import parse_eval_lm
from fairseq_commands import ROOT, USER_DIR, run, write_lines

# One worker builds the module's corpus and model once (scripts/test.sh: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("subword_corpus")

PREPARE = os.path.join(ROOT, "examples", "subword", "prepare.py")
STEMS = "walk talk jump play read write sing dance cook clean".split()
NOUNS = "house garden river mountain city village forest ocean".split()


def _lines(n, seed):
    """Sentences whose words share stems and endings, so sentencepiece splits them; every 9th
    line is empty (a paragraph break), as in WikiText."""
    rng = random.Random(seed)

    def phrase():
        return (f"{rng.choice(['the', 'a', 'my'])} {rng.choice(NOUNS)} "
                f"{rng.choice(STEMS)}{rng.choice(['', 's', 'ed', 'ing', 'er', 'ers'])}")

    return ["" if i % 9 == 0 else " ".join(phrase() for _ in range(rng.randint(1, 3)))
            for i in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("subword")
    text = {split: _lines(n, seed) for split, n, seed in
            (("train", 400, 0), ("valid", 30, 1), ("test", 30, 2))}
    for split, lines in text.items():
        write_lines(str(root / f"{split}.txt"), lines)
    out = run(sys.executable, PREPARE, "--train", root / "train.txt", "--valid", root / "valid.txt",
              "--test", root / "test.txt", "--destdir", root / "data-bin", "--vocab-size", 60,
              "--workers", 1)
    assert "done" in out, out[-3000:]
    ckpt = root / "ckpt"
    run("fairseq-train", root / "data-bin", "--user-dir", USER_DIR, "--task", "truncated_bptt_lm",
        "--tokens-per-sample", 32, "--batch-size", 4, "--arch", "transformer_xl",
        "--n-layer", 2, "--d-model", 32, "--n-head", 2, "--d-head", 16, "--d-inner", 64,
        "--mem-len", 32, "--cutoffs", "1000",  # above the vocabulary: one plain, tied softmax
        "--optimizer", "adam", "--lr", 0.01, "--max-update", 40, "--seed", 1, "--cpu",
        "--save-dir", ckpt, "--no-epoch-checkpoints", "--disable-validation")
    return root, text


def test_prepare_keeps_every_piece_and_decodes_back(corpus):
    root, text = corpus
    data = root / "data-bin"
    sp = spm.SentencePieceProcessor(model_file=str(data / "spm.model"))
    symbols = [line.rsplit(" ", 1)[0] for line in (data / "dict.txt").read_text().splitlines()]
    # every piece but sentencepiece's <unk>, most frequent first
    assert sorted(symbols) == sorted(sp.id_to_piece(i) for i in range(sp.get_piece_size())
                                     if not sp.is_unknown(i))
    counts = [int(line.rsplit(" ", 1)[1]) for line in (data / "dict.txt").read_text().splitlines()]
    assert counts == sorted(counts, reverse=True)
    assert any(s.startswith("▁") and len(s) > 2 for s in symbols)  # real subwords were learned
    for line in text["test"]:
        assert sp.decode(sp.encode(line)) == line


def _eval_lm(data, ckpt, *extra):
    return run("fairseq-eval-lm", data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm",
               "--path", ckpt, "--gen-subset", "test", "--batch-size", 1, "--tokens-per-sample", 16,
               "--model-overrides", "{'mem_len': 48}", "--cpu", *extra)


def test_eval_lm_reports_per_word_figures_of_the_sentencepiece_pieces(corpus):
    root, text = corpus
    out = _eval_lm(root / "data-bin", root / "ckpt" / "checkpoint_last.pt",
                   "--word-pieces", "sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=str(root / "data-bin" / "spm.model"))
    n_tokens = sum(len(sp.encode(line)) + 1 for line in text["test"])  # pieces + </s> per line
    n_words = sum(len(line.split()) + 1 for line in text["test"])  # words + </s> per line
    scored = parse_eval_lm(out)
    assert scored["tokens"] == n_tokens, out[-3000:]
    token_loss = scored["loss"]
    assert "word_loss" in scored and "(sentencepiece pieces merged:" in out, out[-3000:]
    word_loss, word_ppl = scored["word_loss"], scored["word_ppl"]
    assert scored["words"] == n_words
    assert scored["pieces"] == n_tokens
    # The same bits, spread over the words of the raw text instead of the pieces.
    assert word_loss == pytest.approx(token_loss * n_tokens / n_words, abs=1e-4 * n_tokens / n_words)
    assert word_ppl == pytest.approx(2 ** word_loss, rel=1e-3)
    assert token_loss < 0.8 * 5.977  # trained: well below a uniform guess over 63 symbols


def _lines_starting(out, prefix):
    return {line.split("\t")[0][len(prefix):]: line.split("\t")
            for line in out.splitlines() if line.startswith(prefix)}


def test_generate_and_interactive_print_decoded_text(corpus):
    root, _ = corpus
    data, model = root / "data-bin", str(root / "data-bin" / "spm.model")
    sp = spm.SentencePieceProcessor(model_file=model)
    common = [data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm", "--path",
              root / "ckpt" / "checkpoint_last.pt", "--cpu", "--beam", 1, "--max-len-b", 12,
              "--bpe", "sentencepiece", "--sentencepiece-model", model]
    out = run("fairseq-generate", *common, "--gen-subset", "test", "--batch-size", 1)
    hypos, detok = _lines_starting(out, "H-"), _lines_starting(out, "D-")
    assert len(hypos) >= 3 and set(detok) == set(hypos), out[-3000:]
    for i, fields in hypos.items():
        assert detok[i][2] == sp.decode_pieces(fields[2].split())  # sentencepiece's decoding
        assert "▁" not in detok[i][2]
    assert sum("▁" in fields[2] for fields in hypos.values()) >= 2, out[-3000:]

    prompts = root / "prompts.txt"
    prompts.write_text("the garden walk\nmy river\n")
    out = run("fairseq-interactive", *common, "--input", prompts)
    detok = _lines_starting(out, "D-")
    assert [detok[i][2].startswith(p) for i, p in (("0", "the garden walk"), ("1", "my river"))] \
        == [True, True], out[-3000:]
