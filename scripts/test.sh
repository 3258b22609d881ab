#!/usr/bin/env bash
# Set up both supported stacks (if needed) and run the whole test suite on each, then the tests that
# need HuggingFace transformers in the benchmark environment.
#
#   bash scripts/test.sh            # py310 (fairseq 0.12.2), py311 (fairseq-fixed), transformers
#   bash scripts/test.sh py311      # one stack
#   bash scripts/test.sh transformers   # only the transformers tests, in .venv/bench-example
#   bash scripts/test.sh py310 -k resume   # extra arguments go to pytest
#
# The transformers run: the supported stacks have no transformers (it is no dependency of the
# plugin), so the tests that compare with transformers' own TransfoXL (pytest marker `transformers`)
# skip there. They run in .venv/bench-example (transformers 4.34.1, made by
# scripts/setup_bench_env.sh), importing this checkout's plugin (pytest.ini), with
# TRUNCATED_BPTT_REQUIRE_TRANSFORMERS=1: a missing transformers fails them instead of skipping.
#
# Exits non-zero if setting up or testing any stack fails.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

stacks=()
while [ $# -gt 0 ] && [[ "$1" == py3* || "$1" == transformers ]]; do stacks+=("$1"); shift; done
[ ${#stacks[@]} -gt 0 ] || stacks=(py310 py311 transformers)

status=0
summary=()
for stack in "${stacks[@]}"; do
  echo "=== $stack: setting up"
  if [ "$stack" = transformers ]; then
    setup=(bash scripts/setup_bench_env.sh)
    run=(env TRUNCATED_BPTT_REQUIRE_TRANSFORMERS=1 .venv/bench-example/bin/python -m pytest
         -m transformers -p no:cacheprovider tests)
    name="transformers (.venv/bench-example)"
  else
    setup=(bash scripts/setup_env.sh "$stack")
    # Two workers: the suite is dominated by single-threaded fairseq subprocesses.
    run=(".venv/$stack/bin/python" -m pytest -n 2 --dist loadgroup -p no:cacheprovider tests)
    name=$stack
  fi
  if ! "${setup[@]}"; then
    summary+=("$name: SETUP FAILED"); status=1; continue
  fi
  echo "=== $name: running the tests"
  start=$(date +%s)
  "${run[@]}" "$@"
  rc=$?
  if [ $rc -eq 5 ] && [ "$stack" = transformers ] && [ $# -gt 0 ]; then
    summary+=("$name: no test selected by '$*'"); continue  # e.g. -k resume
  fi
  summary+=("$name: pytest exit $rc in $(( $(date +%s) - start )) s")
  [ $rc -eq 0 ] || status=1
done
echo "=== summary"
printf '%s\n' "${summary[@]}"
exit $status
