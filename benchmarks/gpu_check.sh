#!/usr/bin/env bash
# GPU check (under 5 minutes): step throughput of each phase on synthetic batches, and the
# GPU's utilisation meanwhile. For a machine with an NVIDIA GPU and this project installed
# (pip install -e ".[cuda]"); never run by CI.
#
#   bash benchmarks/gpu_check.sh [BACKBONE] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
backbone=${1:-efficientnet_lite0}
batch=${2:-64}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 5 > /tmp/gpu_util.csv &
monitor=$!
trap 'kill $monitor 2>/dev/null || true' EXIT
python benchmarks/step_rate.py --backbone "$backbone" --batch-size "$batch" --steps 200
kill $monitor 2>/dev/null || true
echo "GPU utilisation samples (every 5 s): $(cut -d, -f1 /tmp/gpu_util.csv | tr -d ' %' | paste -sd' ')"
