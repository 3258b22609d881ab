#!/usr/bin/env bash
# Set up both supported stacks (if needed) and run the whole test suite on each.
#
#   bash scripts/test.sh            # both stacks: py310 (fairseq 0.12.2), then py311 (fairseq-fixed)
#   bash scripts/test.sh py311      # one stack
#   bash scripts/test.sh py310 -k resume   # extra arguments go to pytest
#
# Exits non-zero if setting up or testing any stack fails.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

stacks=()
while [ $# -gt 0 ] && [[ "$1" == py3* ]]; do stacks+=("$1"); shift; done
[ ${#stacks[@]} -gt 0 ] || stacks=(py310 py311)

status=0
summary=()
for stack in "${stacks[@]}"; do
  echo "=== $stack: setting up"
  if ! bash scripts/setup_env.sh "$stack"; then
    summary+=("$stack: SETUP FAILED"); status=1; continue
  fi
  echo "=== $stack: running the tests"
  start=$(date +%s)
  # Two workers: the suite is dominated by single-threaded fairseq subprocesses.
  .venv/$stack/bin/python -m pytest -n 2 --dist loadgroup -p no:cacheprovider tests "$@"
  rc=$?
  summary+=("$stack: pytest exit $rc in $(( $(date +%s) - start )) s")
  [ $rc -eq 0 ] || status=1
done
echo "=== summary"
printf '%s\n' "${summary[@]}"
exit $status
