"""One split of a ``fairseq-preprocess``'ed corpus as a single ordered sequence of token ids.

Language modelling with truncated BPTT reads a split as one long text: its lines, in file order,
each ending with the ``eos`` that ``fairseq-preprocess`` appends (the convention of fairseq's
``TokenBlockDataset`` and ``MonolingualDataset``). :class:`TokenStream` holds that sequence;
:class:`~truncated_bptt.stream_dataset.StreamDataset` cuts it into streams and batches.
"""
import logging
import os
from typing import Optional

import numpy as np
import torch
from fairseq.data import FairseqDataset, data_utils

logger = logging.getLogger(__name__)


class TokenStream(FairseqDataset):
    """The tokens of one split, concatenated in order.

    Args:
        tokens: LongTensor/IntTensor [N], the split's token ids in order.
        name: the split's name ("train", "valid", ...); it also names the model memory that
            streams of this split use.
        source: where the tokens came from (for messages).

    Item ``i`` is token ``i`` (a 0-dim tensor); ``len`` is the number of tokens N. Batches are
    never drawn from this dataset directly: the task wraps it in a ``StreamDataset``.
    """

    def __init__(self, tokens: torch.Tensor, name: str, source: str = ""):
        super().__init__()
        if tokens.dim() != 1:
            raise ValueError(f"TokenStream expects a 1-D tensor of token ids, got {tuple(tokens.shape)}")
        self.tokens = tokens
        self.name = name
        self.source = source

    @classmethod
    def load(
        cls, path: str, dictionary, name: str, combine: bool = False,
        dataset_impl: Optional[str] = None,
    ) -> Optional["TokenStream"]:
        """Read ``path`` (a fairseq-preprocess prefix such as ``data-bin/train``).

        Returns None when no such data exists. Token ids are kept as int32 (4 bytes a token) when
        the dictionary allows it, since a whole split stays in memory.
        """
        dtype = np.int32 if len(dictionary) < 2**31 else np.int64
        bin_file = path + ".bin"
        if os.path.isfile(bin_file) and os.path.getsize(bin_file) == 0:
            # fairseq-preprocess of an empty file; fairseq's memory-mapped reader cannot open it
            return cls(torch.from_numpy(np.zeros(0, dtype=dtype)), name=name, source=path)
        data = data_utils.load_indexed_dataset(
            path, dictionary, dataset_impl=dataset_impl, combine=combine
        )
        if data is None:
            return None
        tokens = _contiguous_tokens(data)
        if tokens is None:
            tokens = concatenate_lines(data, dtype)
        return cls(torch.from_numpy(tokens.astype(dtype, copy=False)), name=name, source=path)

    def __getitem__(self, index):
        return self.tokens[index]

    def __len__(self):
        return self.tokens.numel()

    def num_tokens(self, index):
        return 1

    def size(self, index):
        return 1

    def collater(self, samples):
        raise NotImplementedError(
            "TokenStream is not batched directly; the truncated_bptt_lm task wraps it in a "
            "StreamDataset"
        )


def concatenate_lines(data, dtype) -> np.ndarray:
    """The items of an indexed dataset, one after another (any fairseq dataset implementation)."""
    lines = [np.asarray(data[i], dtype=dtype) for i in range(len(data))]
    return np.concatenate(lines) if lines else np.zeros(0, dtype=dtype)


def _contiguous_tokens(data) -> Optional[np.ndarray]:
    """Fast path for fairseq's memory-mapped format (``--dataset-impl mmap``, the default), whose
    ``.bin`` file is the lines' tokens back to back: read it whole instead of line by line (a
    Python loop over WikiText-103's 1.8M lines takes close to a minute). Returns None, for the
    line-by-line path, for other formats or if the index does not describe one contiguous run."""
    index = getattr(data, "_index", None)
    buffer = getattr(data, "_bin_buffer", None)
    if index is None or buffer is None or not hasattr(index, "_pointers"):
        return None
    sizes = np.asarray(index.sizes, dtype=np.int64)
    itemsize = np.dtype(index.dtype).itemsize
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) * itemsize
    if not np.array_equal(np.asarray(index._pointers, dtype=np.int64), starts):
        return None
    return np.frombuffer(buffer, dtype=index.dtype, count=int(sizes.sum()), offset=0)
