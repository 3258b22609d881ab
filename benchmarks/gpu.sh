#!/usr/bin/env bash
# Throughput of the WikiText-103 recipes on this machine's NVIDIA GPUs (training in TF32/fp16/bf16,
# with and without --compile; fairseq-eval-lm and TorchScript at batch 1; 1 vs all GPUs), written
# beside NVIDIA's published figures to benchmarks/results/gpu-<time>.md (see benchmarks/gpu_bench.py).
#
#   bash benchmarks/gpu.sh                 # on a GPU machine (tens of minutes)
#   bash benchmarks/gpu.sh --updates 100   # fewer updates per training run
#   bash benchmarks/gpu.sh --tiny          # the same pipeline on the CPU with a tiny model (minutes)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
[ -x .venv/py310/bin/python ] || bash scripts/setup_env.sh py310
exec .venv/py310/bin/python -m benchmarks.gpu_bench "$@"
