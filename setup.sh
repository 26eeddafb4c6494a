#!/usr/bin/env bash
# One-step set-up on a fresh Debian/Ubuntu machine: system packages, a virtual environment in .venv,
# and rd3fast with its test extras. Re-running it is cheap (pip skips what is installed).
#   ./setup.sh            set up (or update) .venv
#   ./setup.sh --fresh    delete .venv first (what CI does)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

if [ "${1:-}" = "--fresh" ]; then rm -rf .venv; fi

# System packages: Debian's Fashion-MNIST (the built-in real set next to scikit-learn's digits), and what
# FFCV 1.0.2 compiles against (OpenCV, libjpeg-turbo, pkg-config, a C++ compiler, Python headers).
APT=()
[ -d /usr/share/datasets/fashion-mnist ] || APT+=(dataset-fashion-mnist)
command -v pkg-config >/dev/null || APT+=(pkg-config)
command -v g++ >/dev/null || APT+=(g++)
pkg-config --exists opencv4 2>/dev/null || APT+=(libopencv-dev)
pkg-config --exists libturbojpeg 2>/dev/null || APT+=(libturbojpeg0-dev)
"$PY" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || APT+=(python3-dev)
if [ ${#APT[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${APT[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
# test + the readers: DALI (its CPU pipelines run without a GPU) and FFCV's runtime dependencies; Ray for
# the bench's Ray executor (tests/test_executors.py runs it on a local 2-CPU Ray).
.venv/bin/python -m pip install -q -e ".[test,dali,ffcv,ray]"
# FFCV itself: --no-deps, because it declares opencv-python, which would clash with the headless OpenCV
# of the ffcv extra (and needs libGL); it builds a small C++ extension against the apt packages above.
if pkg-config --exists opencv4 libturbojpeg 2>/dev/null; then
  .venv/bin/python -m pip install -q --no-deps "ffcv==1.0.2"
else
  echo "setup.sh: OpenCV/libjpeg-turbo development files not found: FFCV not installed (its tests are skipped)" >&2
fi
.venv/bin/python -c "import rd3fast, torch; print('rd3fast', rd3fast.__version__, 'torch', torch.__version__)"
