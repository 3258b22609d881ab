#!/usr/bin/env bash
# Create (or refresh) the SEPARATE benchmark environment .venv/bench-example: Python 3.10, fairseq 0.12.2,
# torch 2.13.0 and transformers 4.34.1, so that fairseq's own examples/truncated_bptt (HuggingFace's
# TransfoXL wrapped as fairseq model `transformer_xl`) can be timed beside our plugin.
#
#   bash scripts/setup_bench_env.sh          # then: bash benchmarks/run.sh
#
# It never touches the supported stacks (.venv/py310, .venv/py311). Our plugin is NOT installed here:
# the example registers the same names (`transformer_xl`, `truncated_bptt_lm`), so the two must never
# share a process. Re-running when nothing changed returns at once (a stamp hashes the pins).
# Interpreter: PYTHON310 (or PYTHON) overrides the search for a Python 3.10.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$root/.venv/bench-example
reqs=requirements/bench-example.txt
stamp=$venv/.setup-stamp

die() { echo "setup_bench_env: $*" >&2; exit 1; }

hash=$(cd "$root" && cat requirements/bench-example.txt requirements/fairseq-0.12.2.txt \
        requirements/common.txt scripts/setup_bench_env.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ] && [ -x "$venv/bin/python" ]; then
  echo "setup_bench_env: up to date ($venv)"
  exit 0
fi

is_py310() { [ "$("$@" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = 3.10 ]; }
find_python() {
  local override=${PYTHON310:-${PYTHON:-}} c v
  if [ -n "$override" ]; then
    is_py310 "$override" || die "the interpreter you named ($override) is not a working Python 3.10."
    echo "$override"; return
  fi
  for c in python3.10 "$HOME"/.pyenv/versions/3.10*/bin/python3 /usr/local/bin/python3.10 /usr/bin/python3.10; do
    if command -v "$c" >/dev/null 2>&1 && is_py310 "$c"; then command -v "$c"; return; fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.10(\.[0-9]+)?$' | sort -rV); do
      c=$(pyenv root)/versions/$v/bin/python3
      if is_py310 "$c"; then echo "$c"; return; fi
    done
  fi
  die "no Python 3.10 found. Install one (e.g. 'pyenv install 3.10') or set PYTHON310=/path/to/python3.10."
}

python=$(find_python)
echo "setup_bench_env: setting up $venv with $python"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip_() {
  "$venv/bin/python" -m pip --disable-pip-version-check "$@" \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}
pip_ install -q "pip<24.1" setuptools wheel
pip_ install -q -r "$root/$reqs"
# fairseq from its sdist without its declared dependencies (they name torchaudio, which would pull
# another torch); its real runtime dependencies come from requirements/fairseq-0.12.2.txt above.
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('fairseq') != '0.12.2')" 2>/dev/null; then
  pip_ install -q --no-deps "fairseq==0.12.2"
fi
"$venv/bin/python" - <<'PY'
import os, sys, torch, fairseq, transformers
from transformers.models.transfo_xl import TransfoXLLMHeadModel  # noqa: F401  (what the example wraps)
example = os.path.join(os.path.dirname(fairseq.__file__), "examples", "truncated_bptt")
assert os.path.isfile(os.path.join(example, "transformer_xl_model.py")), f"missing {example}"
print(f"setup_bench_env: ready: python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"fairseq {fairseq.__version__}, transformers {transformers.__version__}; example at {example}")
PY
echo "$hash" > "$stamp"
