#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md in one go on one H200 (throughput: about
# two minutes; TOFU: about ten, estimated from the training times, see TOFU_TIMEOUT):
#  1. the NPO step's throughput and model FLOPs utilisation on the Llama-shaped 1.1 B
#     model (bf16, 512-token rows, batch sizes 8, 16, 32; then 32 with gradient
#     checkpointing), alone on the GPU;
#  2. TOFU with the medium model (~36 M parameters) on all 200 authors, forget01,
#     forget05 and forget10 side by side (each trains its own original and reference).
#
#   bash bench/gpu.sh TOFU_DIR OUT_DIR
#
# STAGES picks what runs (default "throughput tofu"); TOFU_TIMEOUT bounds each split's run
# in seconds (default 540: one H200 lease measured 161 s and 154 s to train forget01's
# original and reference, about 10 % more with three splits side by side).
#
# Runs with the python3 on PATH (PYTHON overrides): torch with CUDA, transformers, peft,
# pydantic and scipy are all it needs. Results: OUT_DIR/throughput.jsonl (one JSON list
# per run), OUT_DIR/tofu-SPLIT.json, and every log line in OUT_DIR/log.txt.
set -uo pipefail
data=${1:?usage: bench/gpu.sh TOFU_DIR OUT_DIR}
out=${2:?usage: bench/gpu.sh TOFU_DIR OUT_DIR}
py=${PYTHON:-python3}
# overridable for a quick run elsewhere (e.g. DEVICE=cpu SIZES=tiny AUTHORS=3 SPLITS=forget01)
device=${DEVICE:-cuda} sizes=${SIZES:-llama-1b} authors=${AUTHORS:-200}
stages=${STAGES:-throughput tofu} splits=${SPLITS:-forget01 forget05 forget10} model_size=${MODEL_SIZE:-medium} seq_len=${SEQ_LEN:-512}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
log() { sed -u "s/^/[$1] /" >> "$out/log.txt"; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$py" -c 'import torch, transformers, peft, pydantic, scipy
print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers",
      transformers.__version__, "peft", peft.__version__, "pydantic", pydantic.__version__)'
} 2>&1 | log env

[[ " $stages " == *" throughput "* ]] && for extra in "--batch-sizes 8,16,32" \
    "--batch-sizes 32 --gradient-checkpointing"; do
  # shellcheck disable=SC2086  # $extra is a list of flags
  timeout 120 "$py" "$here/bench/throughput.py" --sizes "$sizes" --seq-len "$seq_len" --steps 16 \
    --device "$device" --json $extra >> "$out/throughput.jsonl" 2> >(log throughput)
done

[[ " $stages " == *" tofu "* ]] && for split in $splits; do
  timeout "${TOFU_TIMEOUT:-540}" "$py" "$here/bench/tofu.py" --data "$data" --split "$split" \
    --authors "$authors" --model-size "$model_size" --device "$device" --json \
    > "$out/tofu-$split.json" 2> >(log "$split") &
done
wait
echo "done" | log gpu.sh
