#!/usr/bin/env bash
# Issue 3's GPU checks as one prepared script for a lent GPU machine (the device tool: one
# H100 or H200, 15 minutes of device time in all, nothing installable or reachable there).
#
#   here, once:   .venv/bin/python -m benchmarks.device_bundle      # ELPV + generic images -> .device/ (~60 MiB)
#   on the GPU:   bash benchmarks/device_check.sh throughput         # ~3 min; carries nothing
#                 bash benchmarks/device_check.sh label-efficiency   # ELPV, standard mode (MODE=...); carry .device
#
# Outputs go to $OUT (what the device tool brings back: at most 8 files, one folder down) or
# to outputs/device-check/. The device's python3 already holds everything the benchmarks
# import (torch, numpy, Pillow, tqdm, matplotlib). A killed label-efficiency run keeps its
# finished pretrainings in .dlvm/bench-cache: rerun on the still-warm machine to continue.
# The tests run it on the CPU:  PYTHON=.venv/bin/python DEVICE=cpu MODE=smoke bash benchmarks/device_check.sh label-efficiency
set -euo pipefail
cd "$(dirname "$0")/.."
step=${1:?"usage: $0 throughput | label-efficiency"}
out=${OUT:-outputs/device-check}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
bundle=${BUNDLE:-.device}
export PYTHONUNBUFFERED=1
mkdir -p "$out"

"$py" -c 'import platform, torch; print("python", platform.python_version(), "torch", torch.__version__,
"gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")' | tee "$out/environment.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >>"$out/environment.txt" 2>/dev/null || true

case "$step" in
  throughput)
    # MAE pretraining steps of ViT-B/S/Ti at 224 px/16, compiled, bf16: images/s, loader share, MFU.
    # ViT-B first: it is the acceptance's row, and the log has each row as soon as it is measured.
    # shellcheck disable=SC2086  # THROUGHPUT_ARGS is a list of extra flags
    "$py" -m benchmarks.pretrain_throughput --device "$device" --models b,s,ti --compile --no-progress \
      --json "$out/throughput.json" ${THROUGHPUT_ARGS:-} 2>&1 | tee "$out/throughput.log"
    ;;
  label-efficiency)
    if [ ! -f "$bundle/BUNDLE.json" ]; then
      echo "device_check: no device bundle at $bundle (BUNDLE.json): build it with benchmarks/device_bundle.py and carry it" >&2
      exit 2
    fi
    size=$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["size"])' "$bundle/BUNDLE.json")
    "$py" -m benchmarks.label_efficiency --domain elpv --mode "${MODE:-standard}" --device "$device" \
      --size "$size" --elpv-bundle "$bundle/elpv-$size" --generic-corpus "$bundle/generic" \
      --cache "${CACHE:-.dlvm/bench-cache}" --out "$out" 2>&1 | tee "$out/label-efficiency.log"
    ;;
  *)
    echo "device_check: unknown step '$step' (throughput | label-efficiency)" >&2
    exit 2
    ;;
esac
