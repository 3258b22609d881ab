#!/usr/bin/env bash
# The benchmark in one command: our Transformer-XL against fairseq's examples/truncated_bptt
# (HuggingFace TransfoXL), side by side on this machine: speed, memory, FLOP/s and quality.
#
#   bash benchmarks/run.sh                                   # WikiText-2 at ../shared/data/wikitext-2
#   bash benchmarks/run.sh --text-dir DIR                    # any directory with train/valid/test.txt
#   bash benchmarks/run.sh --parts speed                     # only speed (about 6 minutes on 2 cores)
#
# Arguments go to benchmarks/compare.py (`bash benchmarks/run.sh --help`). Results:
# benchmarks/results/cpu-<time>.md, .json and .png; the logs of every fairseq command:
# runs/bench/<time>/.
# Makes the separate benchmark environment .venv/bench-example first (scripts/setup_bench_env.sh).
# Run it on an otherwise idle machine: every figure is a wall-clock measurement.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
[ -x .venv/py310/bin/python ] || bash scripts/setup_env.sh py310
bash scripts/setup_bench_env.sh
exec .venv/py310/bin/python -m benchmarks.compare "$@"  # (a package of the repository root)
