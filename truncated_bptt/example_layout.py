"""The batches of fairseq's ``examples/truncated_bptt`` (``--data-layout fairseq_example``).

That example reads a split as this task's default layout does not (:mod:`truncated_bptt.stream_dataset`)::

    blocks:  the split cut into blocks of T = tokens_per_sample tokens (the last may be shorter)
    streams: S = batch_size x num_shards streams of nb = (number of blocks) // S consecutive blocks
             each (stream s holds blocks s*nb ... s*nb+nb-1); the remaining blocks are dropped
    steps:   step i gives stream s its block s*nb+i as input, and as targets the same block shifted
             by one, with padding after its last token

So the first token of every block is never a target, and the target of the last position of every
block is padding. The example also divides its loss by all B x T positions, one per block more than
it scores; here ``ntokens`` counts the real targets, so the logged loss is per scored token.

With this layout (and ``--zero-initial-memory``, HuggingFace's start) this plugin trains on
exactly the example's batches: what a comparison of the two models needs, and what reproducing a
run of the example needs.
"""
import torch

from truncated_bptt.stream_dataset import StreamDataset


class ExampleLayoutDataset(StreamDataset):
    """Step-indexed batches of this rank's streams in the example's layout (arguments as
    :class:`~truncated_bptt.stream_dataset.StreamDataset`)."""

    def __init__(self, tokens, tokens_per_sample, batch_size, num_shards=1, shard_id=0, *, pad, eos,
                 memory_key):
        super().__init__(tokens, tokens_per_sample, batch_size, num_shards, shard_id, pad=pad, eos=eos,
                         memory_key=memory_key)
        num_tokens = tokens.numel()
        num_blocks = -(-num_tokens // tokens_per_sample)
        blocks_per_stream = num_blocks // self.num_streams
        if blocks_per_stream == 0:
            raise ValueError(
                f"split '{memory_key}' has {num_blocks} blocks of {tokens_per_sample} tokens, fewer "
                f"than its {self.num_streams} streams: lower --batch-size or --tokens-per-sample"
            )
        self.tokens = tokens
        streams = torch.arange(self.num_streams)
        self.stream_starts = streams * blocks_per_stream * tokens_per_sample  # [S]
        self.stream_lengths = (num_tokens - self.stream_starts).clamp(
            max=blocks_per_stream * tokens_per_sample)  # [S]; only a last short block shortens one
        self.max_stream_length = blocks_per_stream * tokens_per_sample
        self.num_steps = blocks_per_stream

    def __getitem__(self, step):
        """The batch of ``step``: src_tokens/target LongTensor ``[B, T]``, padded after short blocks."""
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} out of range [0, {self.num_steps})")
        offsets = step * self.tokens_per_sample + torch.arange(self.tokens_per_sample)  # in-stream
        starts = self.stream_starts[self.streams].unsqueeze(1)  # [B, 1]
        lengths = self.stream_lengths[self.streams].unsqueeze(1)  # [B, 1]
        real = offsets.unsqueeze(0) < lengths  # [B, T]
        # a target exists within the block: not after its last position
        has_target = real & (offsets.unsqueeze(0) + 1 < lengths) & (torch.arange(
            self.tokens_per_sample) < self.tokens_per_sample - 1).unsqueeze(0)
        last = self.tokens.numel() - 1  # padded positions read a valid index, then become pad
        pos = (starts + offsets.unsqueeze(0)).clamp(max=last)
        src = torch.where(real, self.tokens[pos].long(), self.pad)
        target = torch.where(has_target, self.tokens[(pos + 1).clamp(max=last)].long(), self.pad)
        return self.batch(step, src, target, real.sum(dim=1), int(has_target.sum()))
