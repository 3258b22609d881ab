"""Rank 0's extra memory when a checkpoint takes the memory of every rank's streams: measured.

Each way of getting the memory of W ranks into one checkpoint runs in W CPU processes joined by a
gloo process group, on scaled-down shapes of the recipes' memory, and every allocation is recorded
by torch's profiler (profile_memory: each allocation and free of the CPU allocator, with its size).
For each run the script reports, on rank 0 (and the most on any other rank):

- **accelerator**: the peak of the bytes the strategy's own code allocates during the call, less
  the returned result. In a GPU run these are exactly the bytes on the accelerator: every such
  allocation is made on the memory's device there, and the only host tensors are the results.
  (What gloo's gather allocates by itself is not counted, but reported: gloo stages a gather in a
  flat buffer of the gathered size, where NCCL, which GPUs use, receives in place.)
- **host**: the returned tensors (what the checkpoint stores, on rank 0's host).

Each figure is compared with its formula (``formula`` columns; e bytes per element, n = B*M*d, L
layers, C the chunk budget, k = max(1, C // (W*e))), and the gathered rows are checked against the
ranks' own memory. The formulas then give the recipes' figures at full size.

Strategies: ``device`` gathers the stacked memory of all ranks onto rank 0's device and concatenates
it on the host (the plugin's former ``gather_rows``); ``device-fp16`` the same in fp16; ``chunked`` the
plugin's :func:`truncated_bptt.memory_gather.gather_memory_to_host`; ``per-rank-files`` each rank
copies its own rows to the host (for a file of its own beside the checkpoint; no collective).

    python -m benchmarks.checkpoint_memory_bytes [--out FILE]   # from the repository root;
    # FILE defaults to benchmarks/results/checkpoint_memory_bytes.md
"""
import argparse
import json
import os
import tempfile
import threading
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.profiler import ProfilerActivity, profile

from truncated_bptt.memory_gather import CHUNK_BYTES, gather_memory_to_host


@dataclass(frozen=True)
class Shape:
    """One rank's memory: L layers of [B, M, d]."""
    name: str
    n_layer: int
    batch: int
    mem_len: int
    d_model: int

    @property
    def layer_elements(self) -> int:
        return self.batch * self.mem_len * self.d_model


# The recipes' memory per GPU (configs/*.yaml: n_layer, dataset.batch_size, mem_len, d_model) and
# the simulated shapes: B / 8, M / 4, d / 8 (a layer 256x smaller; fp32 instead of fp16 so that
# the fp16 strategy differs), with the chunk budget scaled by the same 128x byte ratio.
RECIPES = [
    (Shape("wt103_base", 16, 32, 192, 512), 8),
    (Shape("wt103_large_multinode", 18, 16, 384, 1024), 32),
]
SCALED = [Shape(s.name + " / scaled", s.n_layer, s.batch // 8, s.mem_len // 4, s.d_model // 8)
          for s, _ in RECIPES]
SCALED_CHUNK = CHUNK_BYTES // 128
SMALL_CHUNK = 64 * 2 ** 10  # several chunks per layer, as at full size on many GPUs
SIM_DTYPE = torch.float32


def rank_memory(shape: Shape, rank: int) -> List[torch.Tensor]:
    """Rank ``rank``'s memory in the simulation (reproducible by every rank, for the check)."""
    g = torch.Generator().manual_seed(1000 + rank)
    return [torch.randn(shape.batch, shape.mem_len, shape.d_model, generator=g, dtype=SIM_DTYPE)
            for _ in range(shape.n_layer)]


# ---- the strategies (each returns rank 0's host tensors, or this rank's own for per-rank files) --
def device_gather(hiddens, group, dtype=None):
    """The plugin before: stack, gather W copies on rank 0's device, concatenate on the host.
    With ``dtype``, the stack is made in that dtype (each layer converted while copied in)."""
    if dtype is None:
        stacked = torch.stack(hiddens)
    else:
        stacked = hiddens[0].new_empty((len(hiddens),) + tuple(hiddens[0].shape), dtype=dtype)
        for layer, h in enumerate(hiddens):
            stacked[layer].copy_(h)
    world_size, rank = dist.get_world_size(group), dist.get_rank(group)
    parts = [torch.empty_like(stacked) for _ in range(world_size)] if rank == 0 else None
    dist.gather(stacked, parts, dst=dist.get_global_rank(group, 0), group=group)
    if rank != 0:
        return None
    return list(torch.cat([p.cpu() for p in parts], dim=1).unbind(0))


def per_rank_copy(hiddens):
    """This rank's own rows on the host (what a memory file of its own beside the checkpoint holds)."""
    return [h.detach().cpu().clone() for h in hiddens]


# name -> f(this rank's memory, process group, chunk budget)
STRATEGIES: Dict[str, Callable] = {
    "device": lambda hiddens, group, chunk: device_gather(hiddens, group),
    "device-fp16": lambda hiddens, group, chunk: device_gather(hiddens, group, torch.float16),
    "chunked": lambda hiddens, group, chunk: gather_memory_to_host(hiddens, group, chunk),
    "per-rank-files": lambda hiddens, group, chunk: per_rank_copy(hiddens),
}


def formula(strategy: str, shape: Shape, world_size: int, chunk: Optional[int], e: int) -> dict:
    """Bytes on rank 0 (accelerator, host) and on each other rank, by the documented formulas."""
    n, L, W = shape.layer_elements, shape.n_layer, world_size
    if strategy in ("device", "device-fp16"):
        e = 2 if strategy == "device-fp16" else e
        return {"accelerator": (W + 1) * L * n * e, "host": W * L * n * e, "other": L * n * e}
    if strategy == "chunked":
        k = max(1, chunk // (W * e))
        return {"accelerator": W * min(k, n) * e, "host": W * L * n * e, "other": 0}
    return {"accelerator": 0, "host": L * n * e, "other": 0}


# ---- measuring ------------------------------------------------------------------------------------
def allocations(fn):
    """Run ``fn`` under torch's memory profiler: (result, own peak, own end, collectives' peak).

    "Own" allocations are those the calling thread makes outside collectives (a collective's
    implementation is gloo's, not what runs on GPUs: gloo stages a gather in a flat buffer of the
    gathered size, in its worker thread and in c10d's op, where NCCL receives in place); they are
    matched with their frees by address, whichever thread frees them (gloo's worker thread drops
    its references to a collective's tensors at its own pace). "Own end" is what is still
    allocated when ``fn`` returns (at most: frees may lag).
    """
    me = threading.get_native_id()
    with warnings.catch_warnings(), profile(activities=[ProfilerActivity.CPU],
                                            profile_memory=True) as prof:
        warnings.simplefilter("ignore")
        result = fn()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        with open(f.name) as trace:
            events = json.load(trace)["traceEvents"]
    collectives = [(e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("ph") == "X" and e.get("tid") == me and e["name"].startswith("c10d::")]
    memory = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    own, others = {}, {}
    own_live = own_peak = other_live = other_peak = 0
    for e in memory:
        addr, size = e["args"]["Addr"], e["args"]["Bytes"]
        if size > 0:
            mine = e["tid"] == me and not any(a <= e["ts"] <= b for a, b in collectives)
            (own if mine else others)[addr] = size
            if mine:
                own_live += size
                own_peak = max(own_peak, own_live)
            else:
                other_live += size
                other_peak = max(other_peak, other_live)
        elif addr in own:
            own_live -= own.pop(addr)
        elif addr in others:
            other_live -= others.pop(addr)
    return result, own_peak, own_live, other_peak


def run_job(job: dict, group) -> dict:
    shape, world_size = Shape(**job["shape"]), dist.get_world_size(group)
    rank = dist.get_rank(group)
    hiddens = rank_memory(shape, rank)
    strategy = STRATEGIES[job["strategy"]]
    dist.barrier(group)
    result, peak, end, staging = allocations(lambda: strategy(hiddens, group, job["chunk"]))
    held = sum(t.numel() * t.element_size() for t in result) if result is not None else 0
    assert end >= held, (job, end, held)
    if result is not None:
        check_rows(job["strategy"], shape, world_size, rank, result)
    return {"transient": peak - held, "host": held, "staging": staging}


def check_rows(strategy, shape, world_size, rank, result):
    ranks = [rank] if strategy == "per-rank-files" else range(world_size)
    expected = [torch.cat([rank_memory(shape, r)[layer] for r in ranks]) for layer in range(shape.n_layer)]
    for got, want in zip(result, expected):
        want = want.half() if strategy == "device-fp16" else want
        assert got.device.type == "cpu" and torch.equal(got, want), strategy


def worker(rank: int, world_size: int, store: str, jobs: List[dict], out_dir: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world_size)
    group = dist.new_group()  # a group of its own, as fairseq's data-parallel group is
    results = [run_job(job, group) for job in jobs]
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.barrier(group)
    dist.destroy_process_group()


def simulate(world_size: int, jobs: List[dict]) -> List[dict]:
    """Run ``jobs`` in ``world_size`` gloo processes: per job, rank 0's figures and the others'."""
    with tempfile.TemporaryDirectory() as tmp:
        # fork: the processes start with this one's imports (torch, the plugin) already done
        mp.start_processes(worker, args=(world_size, os.path.join(tmp, "store"), jobs, tmp),
                           nprocs=world_size, start_method="fork")
        ranks = []
        for r in range(world_size):
            with open(os.path.join(tmp, f"rank{r}.json")) as f:
                ranks.append(json.load(f))
    return [{**ranks[0][i], "other": max(r[i]["transient"] for r in ranks[1:])}
            for i in range(len(jobs))]


def jobs_for(shapes=SCALED, chunks=(SCALED_CHUNK, SMALL_CHUNK)) -> List[dict]:
    return [{"strategy": strategy, "shape": asdict(shape), "chunk": chunk}
            for shape in shapes for strategy in STRATEGIES
            for chunk in (chunks if strategy == "chunked" else [None])]


def measured_table(world_sizes=(2, 4), jobs=None) -> List[dict]:
    """Every job at every world size, with its figures, formulas and whether they agree."""
    e = torch.empty((), dtype=SIM_DTYPE).element_size()
    jobs = jobs or jobs_for()
    table = []
    for world_size in world_sizes:
        for job, got in zip(jobs, simulate(world_size, jobs)):
            shape = Shape(**job["shape"])
            measured = {"accelerator": got["transient"], "host": got["host"], "other": got["other"]}
            want = formula(job["strategy"], shape, world_size, job["chunk"], e)
            table.append({**job, "W": world_size, "shape": shape, "gloo": got["staging"],
                          "measured": measured, "formula": want, "match": measured == want})
    return table


def mib(x: int) -> str:
    return f"{x / 2 ** 20:,.3f}"


def report(table: List[dict]) -> str:
    lines = [
        "# Rank 0's extra memory for the streams' memory in a checkpoint",
        "",
        f"Written by `python -m benchmarks.checkpoint_memory_bytes` (gloo, CPU, torch "
        f"{torch.__version__}; see its docstring). "
        f"Simulated memory: fp32; chunk budgets {mib(SCALED_CHUNK)} MiB (the plugin's "
        f"{CHUNK_BYTES // 2 ** 20} MiB scaled like the layers, 128x fewer bytes) and "
        f"{mib(SMALL_CHUNK)} MiB. \"gloo's own\": the peak of what gloo's gather allocated "
        "by itself on rank 0 (not counted: NCCL receives in place).",
        "",
        "| W | shape (per rank) | strategy | chunk MiB | rank 0 accelerator | formula | "
        "rank 0 host | formula | other ranks | formula | match | gloo's own |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in table:
        s, m, f = row["shape"], row["measured"], row["formula"]
        lines.append(
            f"| {row['W']} | {s.name}: L={s.n_layer} B={s.batch} M={s.mem_len} d={s.d_model} | "
            f"{row['strategy']} | {mib(row['chunk']) if row['chunk'] else ''} | "
            f"{mib(m['accelerator'])} | {mib(f['accelerator'])} | {mib(m['host'])} | "
            f"{mib(f['host'])} | {mib(m['other'])} | {mib(f['other'])} | "
            f"{'yes' if row['match'] else 'NO'} | {mib(row['gloo'])} |")
    lines += [
        "",
        "All figures in MiB. Every measured figure equals its formula: "
        f"**{'yes' if all(r['match'] for r in table) else 'NO'}**.",
        "",
        "Rank 0's accelerator bytes at the largest W against the smallest, same shape and budget: "
        + "; ".join(f"{name}: {verdict}" for name, verdict in growth(table)) + ". Chunked: at "
        "most the chunk budget in every row: **"
        + ("yes" if all(r["measured"]["accelerator"] <= r["chunk"] for r in table
                        if r["strategy"] == "chunked") else "NO") + "**.",
        "",
        "## The recipes at full size (fp16 memory), by the formulas verified above",
        "",
        "| recipe | W | one rank's memory | device (before): rank 0 accelerator | chunked: rank 0 "
        "accelerator | chunked: rank 0 host (the checkpoint's memory) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for shape, world_size in RECIPES:
        before = formula("device", shape, world_size, None, 2)
        after = formula("chunked", shape, world_size, CHUNK_BYTES, 2)
        lines.append(
            f"| {shape.name} | {world_size} | {mib(shape.n_layer * shape.layer_elements * 2)} | "
            f"{mib(before['accelerator'])} | {mib(after['accelerator'])} | {mib(after['host'])} |")
    return "\n".join(lines) + "\n"


def growth(table: List[dict]):
    """Per strategy (and chunk budget), whether rank 0's accelerator bytes grow with W."""
    largest, smallest = max(r["W"] for r in table), min(r["W"] for r in table)
    out = []
    for key in dict.fromkeys((r["strategy"], r["chunk"]) for r in table):
        rows = {(r["W"], r["shape"]): r["measured"]["accelerator"] for r in table
                if (r["strategy"], r["chunk"]) == key}
        grows = [rows[largest, shape] > rows[smallest, shape] for w, shape in rows if w == smallest]
        name = key[0] + (f" ({mib(key[1])} MiB budget)" if key[1] else "")
        out.append((name, "grows for every shape" if all(grows) else
                    "grows for some shapes" if any(grows) else "same for every shape"))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results", "checkpoint_memory_bytes.md"))
    args = parser.parse_args()
    text = report(measured_table())
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
