#!/usr/bin/env bash
# What the memory buys on WikiText-2 (or any directory with train.txt, valid.txt and test.txt):
# trains configs/wikitext2_cpu.yaml with memory and with mem_len 0 for the same number of updates,
# scores both with fairseq-eval-lm at mem_len 0, 32, 128 and 512, and writes the table, verdicts and
# plot to benchmarks/results/wikitext2-memory-<UTC time>.{md,json,png}. About 35 minutes of an idle 2-core machine.
#
#   bash examples/wikitext2/run.sh /path/to/wikitext-2               # outputs in runs/wikitext2/
#   bash examples/wikitext2/run.sh /path/to/wikitext-2 --out-dir DIR -- optimization.max_update=500
#
# Options: examples/wikitext2/memory_gain.py --help. PYTHON=... chooses the interpreter (default:
# .venv/py310/bin/python, made by scripts/setup_env.sh py310); fairseq's CLIs are taken next to it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: bash examples/wikitext2/run.sh TEXT_DIR [memory_gain.py options] [-- hydra overrides]" >&2
  exit 2
fi
text_dir=$1; shift
python=${PYTHON:-$root/.venv/py310/bin/python}
# The script imports the repository's `examples` package; run by its path (not -m) so that the
# directory you are in is not searched for modules.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" "$root/examples/wikitext2/memory_gain.py" --text-dir "$text_dir" "$@"
