#!/usr/bin/env bash
# Set up (if needed), then run the whole test suite, slow and vLLM tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
