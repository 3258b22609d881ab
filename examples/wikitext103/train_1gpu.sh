#!/usr/bin/env bash
# Train a recipe on one GPU, keeping its sequences per update with gradient accumulation.
#
#   bash examples/wikitext103/train_1gpu.sh wt103_base [hydra overrides ...]
#   MODE=streams bash examples/wikitext103/train_1gpu.sh wt103_base     # all streams on the GPU
#
# MODE=accumulate (default): the recipe's streams per GPU, update_freq = the recipe's GPU count;
# MODE=streams: every stream on this GPU (batch_size = sequences per update), more memory.
# See examples/wikitext103/batch_overrides.py. DATA (default data-bin/wikitext-103) and VENV as in
# env.sh. Extra arguments are hydra overrides, e.g. checkpoint.save_dir=... common.fp16=false.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
recipe=${1:?usage: train_1gpu.sh RECIPE [hydra overrides ...]}; shift
batch=$("$PYTHON" examples/wikitext103/batch_overrides.py "$recipe" 1 --mode "${MODE:-accumulate}")
set -x
"${BIN}fairseq-hydra-train" --config-dir configs --config-name "$recipe" \
  task.data="$DATA" distributed_training.distributed_world_size=1 $batch "$@"
