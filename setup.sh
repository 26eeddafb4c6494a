#!/usr/bin/env bash
# One-step set-up on a fresh Debian/Ubuntu machine: system packages, a virtual environment in .venv,
# and rd3fast with its test extras. Re-running it is cheap (pip skips what is installed).
#   ./setup.sh            set up (or update) .venv
#   ./setup.sh --fresh    delete .venv first (what CI does)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

if [ "${1:-}" = "--fresh" ]; then rm -rf .venv; fi

# Debian's Fashion-MNIST (the built-in real set next to scikit-learn's digits).
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import rd3fast, torch; print('rd3fast', rd3fast.__version__, 'torch', torch.__version__)"
