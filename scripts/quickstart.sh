#!/usr/bin/env bash
# The offline quickstart: set up the primary environment (.venv/py310), then build a synthetic
# corpus, train a tiny Transformer-XL on CPU and show what its memory is worth (a few minutes).
#
#   bash scripts/quickstart.sh                 # outputs in runs/quickstart/
#   bash scripts/quickstart.sh --out-dir DIR   # elsewhere; --fast for a shorter run
#
# Exits non-zero if the memory does not lower the perplexity by at least 20 %.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup_env.sh" py310
# quickstart.py imports the repository's `examples` package (examples.fairseq_logs, ...), found
# through PYTHONPATH. Run by its path, not with -m, so that the directory you are in (where a
# relative --out-dir points) is not searched for modules.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$root/.venv/py310/bin/python" "$root/examples/quickstart/quickstart.py" "$@"
