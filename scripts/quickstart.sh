#!/usr/bin/env bash
# Set up (if needed), then train SmolLM2-135M-Instruct on the quickstart task and print
# held-out accuracy before -> after. Offline; once set up, 20 steps of about 45 s on a 2-core
# AMD EPYC family 26 with native bf16 (avx512_bf16; about 15 minutes of training), about 65 s on a
# family 25 model 17 (26 minutes in all, set-up included: README), several times that without
# native bf16 (vLLM runs fp32).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/eggroll-rl train recipes/quickstart.yaml "$@"
