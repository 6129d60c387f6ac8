# Sourced by the GPU scripts (gpu_check.sh, gpu_issue11.sh): the repository
# root, the interpreter, the output folder, step/fail helpers, and what the
# machine has (GPU, nvcc, torch).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/fusedlstm_gpu}
mkdir -p "$OUT"
status=0
step() { echo; echo "=== $* ($(date -u +%T))"; }
fail() { echo "FAILED: $*"; status=1; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
(command -v nvcc >/dev/null && nvcc --version | tail -2) || ls -d /usr/local/cuda*/bin/nvcc 2>/dev/null
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'gpus', torch.cuda.device_count())"
