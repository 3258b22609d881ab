#!/usr/bin/env bash
# The offline quickstart: set up the primary environment (.venv/py310), then build a synthetic
# corpus, train a tiny Transformer-XL on CPU with memory and without, and show what the memory buys
# (under 10 minutes on 2 cores).
#
#   bash scripts/quickstart.sh                 # outputs in runs/quickstart/
#   bash scripts/quickstart.sh --out-dir DIR   # elsewhere; --fast for a shorter run
#
# Exits non-zero unless the model trained with memory beats the one trained without, overall and by
# at least 0.5 nats per word on the topic words (docs/quickstart.md).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup_env.sh" py310
# quickstart.py imports the repository's `examples` package (examples.fairseq_logs, ...), found
# through PYTHONPATH. Run by its path, not with -m, so that the directory you are in (where a
# relative --out-dir points) is not searched for modules.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$root/.venv/py310/bin/python" "$root/examples/quickstart/quickstart.py" "$@"
