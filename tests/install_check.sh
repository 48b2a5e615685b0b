#!/usr/bin/env bash
# The library alone, as a user installs it: `pip install -e .` into a fresh
# virtualenv (core dependencies only, at requirements.txt's versions) leaves
# TensorFlow out and trains a step; the slurm extra installs on top of it; the wheel (what `pip install git+URL`
# builds) carries the native kernels' C++ source, and they build from it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
# An editable install writes lenet_jax.egg-info into the checkout; remove it
# afterwards unless it was there before.
egg_info="$root/lenet_jax.egg-info"
[ -e "$egg_info" ] && egg_info=
trap 'rm -rf "$tmp" ${egg_info:+"$egg_info"}' EXIT
start=$SECONDS
python3 -m venv "$tmp/venv"
pip=("$tmp/venv/bin/pip" install -q --disable-pip-version-check)
"${pip[@]}" -c "$root/requirements.txt" -e "$root"
cd "$tmp"  # away from the checkout: every import comes from the installed package

"$tmp/venv/bin/python" - <<'EOF'
import sys

for name in ('tensorflow', 'tensorflow_datasets', 'matplotlib', 'tensorboardX'):
  try:
    __import__(name)
  except ImportError:
    continue
  sys.exit(f'{name} is importable after installing the core package alone')

import flax.linen as nn
import jax
import numpy as np
import optax

import lenet_jax

class Net(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dropout(0.5, deterministic=not train)(x.reshape(x.shape[0], -1))
    return nn.Dense(10)(x)

rng = np.random.default_rng(0)
batch = {'image': rng.integers(0, 256, (8, 28, 28, 1), np.uint8),
         'label': rng.integers(0, 10, 8)}
state = lenet_jax.create_train_state(Net(), optax.sgd(0.1), jax.random.key(0), (28, 28, 1))
state, metrics = lenet_jax.train_step(state, batch)
assert int(state.step) == 1 and np.isfinite(float(metrics['loss'])), metrics
for name in ('tensorflow', 'tensorflow_datasets', 'matplotlib', 'tensorboardX'):
  assert name not in sys.modules, f'training a step imported {name}'
print(f'installed {lenet_jax.__file__}: one step, loss {float(metrics["loss"]):.3f}')
EOF

# The slurm extra installs on top, and the cluster command finds submitit.
"${pip[@]}" -c "$root/requirements.txt" -e "$root[slurm]"
"$tmp/venv/bin/python" -c 'import submitit; from lenet_jax import cluster; cluster._submitit(); print("slurm extra: submitit", submitit.__version__)'

# Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
mkdir "$tmp/src"
cp -r "$root/pyproject.toml" "$root/README.md" "$root/lenet_jax" "$tmp/src"
"$tmp/venv/bin/pip" wheel -q --disable-pip-version-check --no-deps -w "$tmp/wheel" "$tmp/src"
"${pip[@]}" --no-deps --force-reinstall "$tmp"/wheel/lenet_jax-*.whl
LENET_JAX_NATIVE_DIR="$tmp/native" "$tmp/venv/bin/python" - <<'EOF'
import os

from lenet_jax import native

assert os.path.isfile(native.SOURCE), f'{native.SOURCE} is missing from the wheel'
assert 'site-packages' in native.SOURCE, native.SOURCE
native.main()  # builds the library from the installed source and checks it against XLA
EOF
echo "install check passed in $((SECONDS - start)) s"
