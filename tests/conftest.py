"""Shared fixtures: small IDX datasets written by the tests themselves."""
import gzip
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
