"""One data-parallel rank's share of a split, cut into contiguous streams and read segment by segment.

Layout (S = batch_size x num_shards streams, N tokens, T = tokens_per_sample)::

    split:   t0 t1 ... t(N-1)                      (lines in order, each ending with eos)
    streams: stream s is the contiguous slice starting at start[s] of length[s];
             lengths differ by at most one (the first N mod S streams get the extra token),
             so every token belongs to exactly one stream and none is dropped.
    ranks:   rank r owns streams r*B ... r*B+B-1 (row b of its batches is stream r*B+b).
    steps:   step i gives every stream its tokens i*T ... i*T+T-1 (fewer at the last step);
             all ranks have the same number of steps and the same segment length per step.
             With k segments per step (fairseq-eval-lm, ``--eval-segments-per-step``) a step
             holds k consecutive segments, tokens i*k*T ... (i+1)*k*T-1, and the batch says
             ``segment_length`` T: the model scores them as k segments in turn.

Targets are the stream's own tokens; the input at each position is the token just before it in
the split (``eos`` before the split's first token, as fairseq does), so a step's inputs and targets
overlap by all but one token and every token of the split is a target exactly once per pass.
A stream shorter than the step leaves padding at its end (input and target), never elsewhere.

Item ``i`` of :class:`StreamDataset` is the complete batch of step ``i`` in the format of the
model/task contract; :meth:`StreamDataset.collater` unwraps the single item fairseq's
``EpochBatchIterator`` hands it (its batch sampler is ``[[0], [1], ...]``).
"""
import math

import numpy as np
import torch
from fairseq.data import FairseqDataset


class StreamDataset(FairseqDataset):
    """Step-indexed batches of this rank's streams.

    Args:
        tokens: LongTensor/IntTensor [N], the split in order.
        tokens_per_sample: T, tokens per stream per step.
        batch_size: B, streams of this rank.
        num_shards: W, data-parallel ranks sharing the split (S = B * W streams).
        shard_id: this rank r (0 <= r < W).
        pad, eos: dictionary indices.
        memory_key: name of the model memory these streams use (the split name).
        segments_per_step: k, consecutive segments of every stream per step (k x T tokens).
    """

    def __init__(
        self, tokens, tokens_per_sample, batch_size, num_shards=1, shard_id=0, *, pad, eos,
        memory_key, segments_per_step=1,
    ):
        super().__init__()
        if tokens_per_sample <= 0:
            raise ValueError(f"tokens_per_sample must be positive, got {tokens_per_sample}")
        if segments_per_step <= 0:
            raise ValueError(f"segments_per_step must be positive, got {segments_per_step}")
        if batch_size <= 0 or num_shards <= 0 or not 0 <= shard_id < num_shards:
            raise ValueError(
                f"bad stream layout: batch_size={batch_size}, num_shards={num_shards}, "
                f"shard_id={shard_id}"
            )
        num_tokens = tokens.numel()
        num_streams = batch_size * num_shards
        if num_tokens < num_streams:
            raise ValueError(
                f"{num_tokens} tokens cannot fill {num_streams} streams "
                f"(batch_size {batch_size} x {num_shards} data-parallel ranks)"
            )
        self.tokens_per_sample = tokens_per_sample
        self.step_tokens = tokens_per_sample * segments_per_step
        self.batch_size = batch_size
        self.num_shards = num_shards
        self.shard_id = shard_id
        self.num_streams = num_streams
        self.pad = pad
        self.eos = eos
        self.memory_key = memory_key

        # shifted[g] is the input that predicts token g; shifted[g + 1] is token g itself.
        self.shifted = torch.cat([tokens.new_full((1,), eos), tokens])
        base, extra = divmod(num_tokens, num_streams)
        streams = torch.arange(num_streams)
        self.stream_lengths = base + (streams < extra).long()  # [S]
        self.stream_starts = streams * base + streams.clamp(max=extra)  # [S]
        self.max_stream_length = base + (1 if extra else 0)
        self.num_steps = math.ceil(self.max_stream_length / self.step_tokens)
        self.streams = streams[shard_id * batch_size:(shard_id + 1) * batch_size]  # [B]

    def __len__(self):
        return self.num_steps

    def step_length(self, step):
        """Tokens per stream at ``step`` (k x T, or the remainder at the last step), same on all ranks."""
        return min(self.step_tokens, self.max_stream_length - step * self.step_tokens)

    def __getitem__(self, step):
        """The batch of ``step``: src_tokens/target LongTensor [B, T_step], padded at stream ends."""
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} out of range [0, {self.num_steps})")
        length = self.step_length(step)
        offsets = step * self.step_tokens + torch.arange(length)  # [T_step] in-stream
        starts = self.stream_starts[self.streams]  # [B]
        lengths = self.stream_lengths[self.streams]  # [B]
        real = offsets.unsqueeze(0) < lengths.unsqueeze(1)  # [B, T_step]
        # Clamp the padded positions to a valid index; they are overwritten with pad below.
        pos = (starts.unsqueeze(1) + offsets.unsqueeze(0)).clamp(max=self.shifted.numel() - 2)
        src = torch.where(real, self.shifted[pos].long(), self.pad)
        target = torch.where(real, self.shifted[pos + 1].long(), self.pad)
        return self.batch(step, src, target, real.sum(dim=1), int(real.sum()))

    def batch(self, step, src_tokens, target, src_lengths, ntokens):
        """The dict fairseq's trainer, the model and the criterion read for ``step``'s segment."""
        return {
            # Unique over the pass: step-major, then global stream index.
            "id": step * self.num_streams + self.streams,
            "nsentences": self.batch_size,
            "ntokens": ntokens,
            "net_input": {
                "src_tokens": src_tokens,
                "src_lengths": src_lengths,
                "memory_key": self.memory_key,
                "segment_index": step,
                "segment_length": self.tokens_per_sample,
            },
            "target": target,
        }

    def collater(self, samples):
        """``samples`` is ``[batch]`` (one dataset item per step): return the batch itself."""
        if len(samples) == 0:
            return {}
        if len(samples) != 1:
            raise ValueError(f"StreamDataset batches one step at a time, got {len(samples)} items")
        return samples[0]

    def num_tokens(self, index):
        return self.batch_size * self.step_length(index)

    def size(self, index):
        return self.step_length(index)

    @property
    def sizes(self):
        return np.array([self.step_length(i) for i in range(self.num_steps)], dtype=np.int64)

    def ordered_indices(self):
        return np.arange(self.num_steps, dtype=np.int64)

    @property
    def supports_prefetch(self):
        return False

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        return True
