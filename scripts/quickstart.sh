#!/usr/bin/env bash
# Set up (if needed), then train SmolLM2-135M-Instruct on the quickstart task and print
# held-out accuracy before -> after. Offline; about 15 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2}
export VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-0-$(( $(nproc) - 1 ))}
export VLLM_CPU_NUM_OF_RESERVED_CPU=${VLLM_CPU_NUM_OF_RESERVED_CPU:-0}
exec .venv/bin/eggroll-rl train recipes/quickstart.yaml "$@"
