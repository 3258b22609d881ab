"""TokenStream.load reads a split, binarized the way fairseq-preprocess does, as one sequence."""
import os

import torch
from fairseq.data import Dictionary, indexed_dataset

from truncated_bptt.token_stream import TokenStream, _contiguous_tokens, concatenate_lines


def binarize(prefix, dictionary, lines):
    """What fairseq-preprocess --only-source writes for ``lines`` (each line ends with eos)."""
    builder = indexed_dataset.make_builder(
        indexed_dataset.data_file_path(prefix), impl="mmap", vocab_size=len(dictionary)
    )
    for line in lines:
        builder.add_item(dictionary.encode_line(line, add_if_not_exist=False))
    builder.finalize(indexed_dataset.index_file_path(prefix))


def test_lines_are_concatenated_in_order_each_with_eos(tmp_path):
    d = Dictionary()
    for w in "a b c d".split():
        d.add_symbol(w)
    lines = ["a b", "", "c d a", "b"]
    binarize(str(tmp_path / "train"), d, lines)
    stream = TokenStream.load(str(tmp_path / "train"), d, name="train")
    expected = []
    for line in lines:
        expected += [d.index(w) for w in line.split()] + [d.eos()]
    assert stream.tokens.tolist() == expected
    assert len(stream) == len(expected) and stream.name == "train"
    assert stream.tokens.dtype == torch.int32


def test_combine_reads_the_numbered_parts_after_the_first(tmp_path):
    d = Dictionary()
    d.add_symbol("x")
    binarize(str(tmp_path / "train"), d, ["x"])
    binarize(str(tmp_path / "train1"), d, ["x x"])
    assert len(TokenStream.load(str(tmp_path / "train"), d, name="train")) == 2
    assert len(TokenStream.load(str(tmp_path / "train"), d, name="train", combine=True)) == 5


def test_missing_split_is_none_and_empty_split_is_empty(tmp_path):
    d = Dictionary()
    assert TokenStream.load(str(tmp_path / "nothing"), d, name="valid") is None
    binarize(str(tmp_path / "valid"), d, [])
    assert os.path.getsize(tmp_path / "valid.bin") == 0
    assert len(TokenStream.load(str(tmp_path / "valid"), d, name="valid")) == 0


def test_whole_file_read_equals_the_line_by_line_reference(tmp_path):
    d = Dictionary()
    for i in range(300):  # ids beyond 255: the file holds uint16
        d.add_symbol(f"w{i}")
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(f"w{int(j)}" for j in torch.randint(0, 300, (int(n),), generator=g))
             for n in torch.randint(0, 9, (200,), generator=g)]
    binarize(str(tmp_path / "train"), d, lines)
    stream = TokenStream.load(str(tmp_path / "train"), d, name="train")
    data = indexed_dataset.MMapIndexedDataset(str(tmp_path / "train"))
    reference = concatenate_lines(data, "int64")
    assert stream.tokens.tolist() == reference.tolist()
    assert _contiguous_tokens(data) is not None  # the fast path was taken
