#!/usr/bin/env bash
# Test perplexity of a trained recipe with its published evaluation settings.
#
#   bash examples/wikitext103/evaluate.sh wt103_base [CHECKPOINT] [extra fairseq-eval-lm options]
#   SUBSET=valid bash examples/wikitext103/evaluate.sh wt103_large checkpoints/wt103_large/checkpoint_last.pt
#
# CHECKPOINT defaults to checkpoints/RECIPE/checkpoint_best.pt. Settings (segment tokens / mem_len /
# clamp_len, all with same_length):
#   wt103_base, paper_base:                    64 / 640 / 400
#   wt103_large, wt103_large_multinode:        128 / 1600 / 1000
#   tiny_cpu (the quickstart's evaluation):    16 / 256 / 192, no same_length, on CPU
# The test split is scored as one stream (--batch-size 1), every token once, each segment over the
# memory of everything before it (up to mem_len). Override with TOKENS, MEM_LEN, CLAMP_LEN.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
recipe=${1:?usage: evaluate.sh RECIPE [CHECKPOINT] [fairseq-eval-lm options ...]}; shift
ckpt=${1:-checkpoints/$recipe/checkpoint_best.pt}; [ $# -gt 0 ] && shift
same=True extra=()
case "$recipe" in
  wt103_base|paper_base) t=64 m=640 c=400 ;;
  wt103_large|wt103_large_multinode) t=128 m=1600 c=1000 ;;
  tiny_cpu) t=16 m=256 c=192 same=False extra=(--cpu) ;;
  *) echo "evaluate.sh: unknown recipe $recipe (see configs/)" >&2; exit 2 ;;
esac
t=${TOKENS:-$t} m=${MEM_LEN:-$m} c=${CLAMP_LEN:-$c}
set -x
"${BIN}fairseq-eval-lm" "$DATA" --user-dir truncated_bptt --task truncated_bptt_lm --path "$ckpt" \
  --gen-subset "${SUBSET:-test}" --batch-size 1 --tokens-per-sample "$t" \
  --model-overrides "{'mem_len': $m, 'clamp_len': $c, 'same_length': $same}" "${extra[@]}" "$@"
