#!/usr/bin/env bash
# Train a recipe on the GPUs of one node with torchrun (8 by default), keeping its sequences per
# update.
#
#   bash examples/wikitext103/train_8gpu.sh wt103_base [hydra overrides ...]
#   GPUS=4 bash examples/wikitext103/train_8gpu.sh wt103_large          # update_freq 2
#
# torchrun starts one process per GPU; fairseq reads RANK/WORLD_SIZE/LOCAL_RANK from it. MODE and
# the overrides as in train_1gpu.sh. With the recipe's own GPU count nothing is changed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
recipe=${1:?usage: train_8gpu.sh RECIPE [hydra overrides ...]}; shift
gpus=${GPUS:-8}
batch=$("$PYTHON" examples/wikitext103/batch_overrides.py "$recipe" "$gpus" --mode "${MODE:-accumulate}")
set -x
"${BIN}torchrun" --standalone --nproc_per_node "$gpus" "$(command -v "${BIN}fairseq-hydra-train")" \
  --config-dir configs --config-name "$recipe" \
  task.data="$DATA" distributed_training.distributed_world_size="$gpus" $batch "$@"
