#!/usr/bin/env bash
# Set up (if needed), then train SmolLM2-135M-Instruct on the quickstart task and print
# held-out accuracy before -> after. Offline; about 5 minutes on a 2-core CPU once set up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/eggroll-rl train recipes/quickstart.yaml "$@"
