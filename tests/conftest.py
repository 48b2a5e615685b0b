"""Shared fixtures: small IDX datasets written by the tests themselves.

The whole session (this process, its pytest-xdist workers and every CLI
process the tests start) shares one persistent XLA compilation cache in a
temporary directory: the tests compile the same tiny programs again and again
(about 3 of a CLI test's 9 seconds), and a program from the cache is the
program the compiler would build. The user's own cache is never touched.
"""
import atexit
import gzip
import os
import shutil
import sys
import tempfile

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if 'LENET_JAX_TESTS_XLA_CACHE' not in os.environ:  # set by pytest, inherited by its children
  if 'jax' in sys.modules:  # JAX reads JAX_COMPILATION_CACHE_DIR when it is imported
    raise RuntimeError('tests/conftest.py must be loaded before jax is imported.')
  _XLA_CACHE = tempfile.mkdtemp(prefix='lenet_jax_tests_xla_')
  os.environ['LENET_JAX_TESTS_XLA_CACHE'] = os.environ['JAX_COMPILATION_CACHE_DIR'] = _XLA_CACHE
  atexit.register(shutil.rmtree, _XLA_CACHE, True)


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
