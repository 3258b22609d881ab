#!/usr/bin/env bash
# Create (or refresh) the virtual environment of one supported stack and install the plugin in it.
#
#   bash scripts/setup_env.sh py310     # primary:   Python 3.10 + fairseq 0.12.2
#   bash scripts/setup_env.sh py311     # secondary: Python 3.11 + fairseq-fixed 0.12.3.1
#
# The environment lands in .venv/<stack>. Re-running when nothing changed returns in about a second:
# a stamp records a hash of the requirement files and of the plugin's sources.
# Interpreter: PYTHON310 / PYTHON311 (or PYTHON, for the stack being set up) override the search.
set -euo pipefail

stack=${1:-}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

case "$stack" in
  py310) want=3.10; override=${PYTHON310:-${PYTHON:-}}
         reqs=requirements/fairseq-0.12.2.txt; fairseq_spec="fairseq==0.12.2"
         # Without torch in the isolated build env, setup.py skips the optional C++ extensions
         # (libbase's source is missing from the 0.12.2 sdist and would fail to build).
         fairseq_build_flags="" ;;
  py311) want=3.11; override=${PYTHON311:-${PYTHON:-}}
         reqs=requirements/fairseq-fixed-0.12.3.1.txt; fairseq_spec="fairseq-fixed==0.12.3.1"
         # Its pyproject asks for torch at build time: build against the pinned one already installed.
         fairseq_build_flags="--no-build-isolation" ;;
  *) echo "usage: $0 py310|py311" >&2; exit 2 ;;
esac

die() { echo "setup_env: $*" >&2; exit 1; }

is_version() {  # is_version PYTHON: does this interpreter run and report version $want?
  local v
  v=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || return 1
  [ "$v" = "$want" ]
}

real_path() {  # the interpreter itself, not a pyenv shim that depends on PYENV_VERSION
  "$1" -c 'import sys; print(sys.executable)'
}

find_python() {
  if [ -n "$override" ]; then
    is_version "$override" || die "the interpreter you named ($override) is not a working Python $want."
    real_path "$override"; return
  fi
  local c
  for c in "python$want" "$HOME/.pyenv/versions/$want"*/bin/python3 \
           /usr/local/bin/python$want /usr/bin/python$want; do
    if command -v "$c" >/dev/null 2>&1 && is_version "$c"; then real_path "$c"; return; fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    local v
    for v in $(pyenv versions --bare 2>/dev/null | grep -E "^$want(\.[0-9]+)?$" | sort -rV); do
      c=$(pyenv root)/versions/$v/bin/python3
      if is_version "$c"; then real_path "$c"; return; fi
    done
  fi
  die "no Python $want found (looked for python$want on PATH and in pyenv).
Install one (e.g. 'pyenv install $want') or point to it with PYTHON${want/./}=/path/to/python$want."
}

venv=$root/.venv/$stack
stamp=$venv/.setup-stamp
hash=$(cd "$root" && cat requirements/*.txt setup.py scripts/setup_env.sh \
        $(find truncated_bptt -name '*.py' | sort) | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ] && [ -x "$venv/bin/python" ]; then
  echo "setup_env: $stack is up to date ($venv)"
  exit 0
fi

python=$(find_python)
echo "setup_env: setting up $stack in $venv with $python"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip_() {  # pip of the venv, without the noise of find-links locations that lack a package
  "$venv/bin/python" -m pip --disable-pip-version-check "$@" \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}
# fairseq and fairseq-fixed install the same package: a stack must only ever hold its own.
other=$([ "$stack" = py310 ] && echo fairseq-fixed || echo fairseq)
pip_ uninstall -y -q "$other" >/dev/null 2>&1 || true

pip_ install -q "pip<24.1" setuptools wheel
pip_ install -q -r "$root/$reqs"
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; \
    n, v = '$fairseq_spec'.split('=='); sys.exit(m.version(n) != v)" 2>/dev/null; then
  pip_ install -q --no-deps $fairseq_build_flags "$fairseq_spec"
fi
# The plugin itself: a regular (non-editable) install, so that `--user-dir truncated_bptt` also
# resolves from any directory through fairseq's site-packages fallback.
pip_ install -q --no-deps --no-build-isolation --force-reinstall "$root"
"$venv/bin/python" - <<PY
import torch, fairseq, truncated_bptt
print(f"setup_env: $stack ready: python {__import__('sys').version.split()[0]}, torch {torch.__version__}, "
      f"fairseq {fairseq.__version__}, apex {'yes' if truncated_bptt.apex_available() else 'no'}")
PY
echo "$hash" > "$stamp"
