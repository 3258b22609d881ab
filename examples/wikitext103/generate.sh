#!/usr/bin/env bash
# Sample continuations of prompts from a trained model (fairseq-interactive, top-p sampling).
#
#   echo "= Robert Boulter =" | bash examples/wikitext103/generate.sh checkpoints/wt103_base/checkpoint_best.pt
#   PROMPTS=prompts.txt CARRY=1 bash examples/wikitext103/generate.sh CHECKPOINT [fairseq options]
#
# One prompt per line (tokenized like the training text: WikiText-103 separates punctuation with
# spaces). Settings: MEM_LEN (640), TOPP (0.9), TEMP (0.8), MAX_LEN (200 new tokens), SEED (1);
# CARRY=1 generates each prompt after the previous prompts and outputs (one memory for the session).
# Hypotheses are the H- lines. See docs/inference.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ckpt=${1:?usage: generate.sh CHECKPOINT [fairseq-interactive options ...]}; shift
set -x
"${BIN}fairseq-interactive" "$DATA" --user-dir truncated_bptt --task truncated_bptt_lm --path "$ckpt" \
  --model-overrides "{'mem_len': ${MEM_LEN:-640}}" --beam 1 --nbest 1 --sampling \
  --sampling-topp "${TOPP:-0.9}" --temperature "${TEMP:-0.8}" \
  --max-len-b "${MAX_LEN:-200}" --seed "${SEED:-1}" \
  ${CARRY:+--carry-memory --batch-size 1 --buffer-size 1} \
  --input "${PROMPTS:--}" "$@"
