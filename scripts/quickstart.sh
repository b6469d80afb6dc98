#!/usr/bin/env bash
# Set up (if needed), then train SmolLM2-135M-Instruct on the quickstart task and print
# held-out accuracy before -> after with its 95% interval. Offline. 13 minutes of training on
# any CPU (as many steps as fit: more with native bf16, fewer without); the README gives the
# minutes in all and the gain per CPU kind measured.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/eggroll-rl train recipes/quickstart.yaml "$@"
