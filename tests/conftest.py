"""Shared fixtures: small IDX datasets written by the tests themselves; the
backend-dependent parts of the suite (markers, tolerances, optional packages).

The whole session (this process, its pytest-xdist workers and every CLI
process the tests start) shares one persistent XLA compilation cache in a
temporary directory: the tests compile the same tiny programs again and again
(about 3 of a CLI test's 9 seconds), and a program from the cache is the
program the compiler would build. The user's own cache is never touched.

Off the CPU (docs/testing.md): tests marked `cpu_bitwise` assert bitwise
equality and are skipped, tests marked `native_cpu` need the native C++
kernels and are skipped, and `float_tolerance` / the `float32_matmuls`
fixture keep float comparisons meaningful under TF32 and autotuned kernels.
"""
import atexit
import gzip
import importlib.util
import os
import shutil
import sys
import tempfile

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# On a GPU, JAX reserves 75% of the device's memory in every process that starts
# its backend; with one pytest-xdist worker per core (and the CLI processes the
# tests start, which inherit this environment) all but the first would run out
# of memory. Allocating on demand lets them share one GPU. Read when the GPU
# backend starts, so it has to be set before any test touches a device.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
if 'LENET_JAX_TESTS_XLA_CACHE' not in os.environ:  # set by pytest, inherited by its children
  if 'jax' in sys.modules:  # JAX reads JAX_COMPILATION_CACHE_DIR when it is imported
    raise RuntimeError('tests/conftest.py must be loaded before jax is imported.')
  _XLA_CACHE = tempfile.mkdtemp(prefix='lenet_jax_tests_xla_')
  os.environ['LENET_JAX_TESTS_XLA_CACHE'] = os.environ['JAX_COMPILATION_CACHE_DIR'] = _XLA_CACHE
  atexit.register(shutil.rmtree, _XLA_CACHE, True)


# ----------------------------------------------------------------------------
# The backend. Every check below starts JAX's backend lazily, while a test is
# set up or runs, never while test modules are imported or collected (a worker
# that started a GPU backend at collection would hold the device for nothing).

CPU_BITWISE_REASON = ('bitwise equality is asserted on the CPU only: GPU kernels (cuDNN '
                      'autotuning, atomics) may reorder float sums between runs')
NATIVE_CPU_REASON = ('the native C++ convolution (conv_impl=native) runs on the CPU '
                     'backend only')


def backend() -> str:
  import jax  # pylint: disable=import-outside-toplevel  # after the cache directory is set
  return jax.default_backend()


def on_cpu() -> bool:
  return backend() == 'cpu'


def pytest_runtest_setup(item):
  """Skips `cpu_bitwise` and `native_cpu` tests off the CPU, with the reason."""
  for marker, reason in (('cpu_bitwise', CPU_BITWISE_REASON), ('native_cpu', NATIVE_CPU_REASON)):
    if item.get_closest_marker(marker) is not None and not on_cpu():
      pytest.skip(f'{reason} (backend: {backend()})')


# Off the CPU, XLA runs float32 convolutions and matrix multiplies in TF32 by
# default on recent NVIDIA GPUs (a 10-bit mantissa: about 1e-3 relative error),
# and picks each program's kernels by autotuning, so two programs computing the
# same function (XLA's convolution and the patches one, vmapped and alone, a
# scan and a loop) differ by more than float32 reassociation. Comparisons of
# two such programs run under the `float32_matmuls` fixture (full float32 off
# the CPU) and take their tolerance from `float_tolerance`.
OFF_CPU_RTOL = OFF_CPU_ATOL = 1e-3


def float_tolerance(rtol=0.0, atol=0.0, *, off_cpu=(OFF_CPU_RTOL, OFF_CPU_ATOL)):
  """`dict(rtol=, atol=)` for np.testing.assert_allclose: as given on the CPU
  (never looser there; rtol=atol=0 is bitwise equality), and no tighter than
  `off_cpu` elsewhere. Off the CPU 1e-3 still tells a wrong function (errors of
  order 1) from rounding."""
  if on_cpu():
    return {'rtol': rtol, 'atol': atol}
  return {'rtol': max(rtol, off_cpu[0]), 'atol': max(atol, off_cpu[1])}


@pytest.fixture
def float32_matmuls():
  """Full float32 convolutions and matrix multiplies off the CPU, for the test's
  duration (JAX's jit caches key on the setting); on the CPU, nothing changes."""
  if on_cpu():
    yield
    return
  import jax  # pylint: disable=import-outside-toplevel
  with jax.default_matmul_precision('float32'):
    yield


# ----------------------------------------------------------------------------
# Optional packages (pyproject.toml's extras): a test that needs one is skipped,
# with the install command, where it is absent. Checked with find_spec, which
# imports nothing (TensorFlow takes seconds to import).

INSTALL_HINT = 'pip install -e .[all] or pip install -r requirements.txt'


def _missing(package: str) -> bool:
  try:
    return importlib.util.find_spec(package) is None
  except (ImportError, ValueError):
    return True


def _missing_reason(packages) -> str | None:
  missing = [p for p in packages if _missing(p)]
  if not missing:
    return None
  return f'needs {" and ".join(missing)}, not installed here; {INSTALL_HINT}'


def requires(*packages: str):
  """A skipif mark: the test needs every package of `packages` installed."""
  reason = _missing_reason(packages)
  return pytest.mark.skipif(reason is not None, reason=reason or '')


def skip_unless_installed(*packages: str) -> None:
  """`requires`, decided inside a test (when only the test knows what it needs)."""
  reason = _missing_reason(packages)
  if reason is not None:
    pytest.skip(reason)


# ----------------------------------------------------------------------------
# Data


def write_idx(path, array, compress=True):
  array = np.asarray(array, np.uint8)
  header = bytes([0, 0, 8, array.ndim]) + b''.join(
      d.to_bytes(4, 'big') for d in array.shape)
  opener = gzip.open if compress else open
  with opener(path, 'wb') as f:
    f.write(header + array.tobytes())


def separable_images(n, rng, size=28):
  """Labels 0..9; class c lights up a distinct horizontal band: trivially learnable."""
  labels = rng.integers(0, 10, n)
  images = rng.integers(0, 40, (n, size, size)).astype(np.uint8)
  for i, c in enumerate(labels):
    images[i, 2 + 2 * c:4 + 2 * c, :] = 255
  return images, labels


@pytest.fixture
def idx_dir(tmp_path):
  """A directory of four IDX files: 1,200 train and 300 test separable examples."""
  rng = np.random.default_rng(0)
  for prefix, n in (('train', 1200), ('t10k', 300)):
    images, labels = separable_images(n, rng)
    write_idx(tmp_path / f'{prefix}-images-idx3-ubyte.gz', images)
    write_idx(tmp_path / f'{prefix}-labels-idx1-ubyte.gz', labels)
  return tmp_path
