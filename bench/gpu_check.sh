#!/usr/bin/env bash
# bench/gpu_check.py on a GPU machine that has PyTorch and transformers but no package index
# (this project's lent H200): what it lacks travels in .gpu/ (git-ignored).
#
#   bash bench/gpu_check.sh prepare      # here, with a package index: wheels, tokenizer, commit into .gpu/
#   bash bench/gpu_check.sh [ARGS...]    # there (carry .gpu): installs them and runs the check with ARGS
#
# On a GPU machine set up by scripts/setup.sh, run `python bench/gpu_check.py` instead.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = prepare ]; then
  rm -rf .gpu && mkdir -p .gpu/wheels .gpu/tokenizer
  # The device's Python is 3.12; these are pure-Python wheels (versions as in this checkout's set-up).
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels \
    trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
    math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2
  model=$(.venv/bin/python -c "from eggroll_rl.models import resolve_model; print(resolve_model('smollm2-135m-instruct'))")
  for f in tokenizer.json tokenizer_config.json chat_template.jinja generation_config.json config.json; do
    cp "$model/$f" .gpu/tokenizer/
  done
  git describe --always --dirty > .gpu/commit
  echo "prepared .gpu ($(du -sh .gpu | cut -f1)) at $(cat .gpu/commit); run there with carry [\".gpu\"]: bash bench/gpu_check.sh"
  exit 0
fi

[ -d .gpu/wheels ] || { echo "no .gpu/wheels: run 'bash bench/gpu_check.sh prepare' here first and carry .gpu" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/eggroll-site .gpu/wheels/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/eggroll-pkg .
export PYTHONPATH=/tmp/eggroll-pkg:/tmp/eggroll-site${PYTHONPATH:+:$PYTHONPATH}
export EGGROLL_COMMIT="$(cat .gpu/commit)" PYTHONUNBUFFERED=1
exec python3 -P bench/gpu_check.py --tokenizer .gpu/tokenizer "$@"
