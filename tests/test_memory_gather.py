"""gather_memory_to_host: in one process a CPU copy; across gloo processes (spawned by the byte
measurement benchmarks/checkpoint_memory_bytes.py) every rank's rows in order, with rank 0's
transient allocations bounded by the chunk budget whatever the number of ranks."""
from dataclasses import asdict

import torch

from benchmarks.checkpoint_memory_bytes import SCALED, SMALL_CHUNK, measured_table
from truncated_bptt.memory_gather import gather_memory_to_host


def test_without_a_process_group_it_returns_a_cpu_copy():
    hiddens = [torch.randn(2, 3, 4), torch.randn(2, 3, 4)]
    out = gather_memory_to_host(hiddens)
    assert all(torch.equal(a, b) and a.data_ptr() != b.data_ptr() for a, b in zip(out, hiddens))


def test_two_gloo_ranks_gather_every_row_in_chunks_within_the_budget():
    """Layers of 12,288 fp32 elements per rank and a 64 KiB budget: chunks of 8,192 elements (the
    last one shorter), rank 0's buffer 64 KiB; every gathered row is checked in the processes."""
    shape = SCALED[0]
    jobs = [{"strategy": "chunked", "shape": asdict(shape), "chunk": SMALL_CHUNK},
            {"strategy": "device", "shape": asdict(shape), "chunk": None}]
    chunked, device = measured_table(world_sizes=(2,), jobs=jobs)
    assert shape.layer_elements % (SMALL_CHUNK // 8) != 0  # a shorter last chunk
    assert chunked["match"] and chunked["measured"]["accelerator"] == SMALL_CHUNK
    assert chunked["measured"]["other"] == 0
    # before: rank 0 held a stacked copy and both ranks' memory
    assert device["match"] and device["measured"]["accelerator"] == 3 * 16 * shape.layer_elements * 4
