# Sourced by the WikiText-103 scripts: where the repository, the fairseq tools and the data are.
#   VENV  virtual environment whose fairseq tools to use (default: .venv/py310 of this repository;
#         set VENV= (empty) to use whatever fairseq-* is on PATH)
#   DATA  fairseq-preprocess output (default: data-bin/wikitext-103 under the repository)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${VENV-$ROOT/.venv/py310}
if [ -n "$VENV" ] && [ -x "$VENV/bin/fairseq-train" ]; then
  BIN="$VENV/bin/"
  PYTHON="$VENV/bin/python"
else
  BIN=""
  PYTHON=$(command -v python3 || command -v python)
fi
DATA=${DATA:-$ROOT/data-bin/wikitext-103}
# Run from the repository root so that `common.user_dir: truncated_bptt` and the relative paths of
# the recipes (checkpoints/...) resolve there.
cd "$ROOT"
