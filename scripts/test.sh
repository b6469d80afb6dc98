#!/usr/bin/env bash
# Set up (if needed), then run the whole test suite, slow and vLLM tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2}
exec .venv/bin/python -m pytest -q "$@"
