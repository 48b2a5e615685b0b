"""Loading: IDX files (and corrupt ones), the validation split, the TFDS path under mock data."""
import gzip
import os

import numpy as np
import pytest

from conftest import write_idx
from lenet_jax import data
from lenet_jax.config import DataConfig


def _cfg(directory, **kw):
  return DataConfig(dataset='mnist', source='idx', idx_dir=str(directory), **kw)


def test_idx_directory_loads_with_a_fixed_validation_split(idx_dir):
  data.load.cache_clear()
  ds = data.load(_cfg(idx_dir, validation_size=200))
  assert ds.source == f'idx:{idx_dir}'
  assert ds.train_images.shape == (1000, 28, 28, 1) and ds.train_images.dtype == np.uint8
  assert ds.val_images.shape == (200, 28, 28, 1)
  assert ds.test_images.shape == (300, 28, 28, 1)
  assert ds.train_labels.dtype == np.int32
  # The split is a partition of the training file, the same every time.
  (x, y), (vx, vy) = data.split_validation(np.arange(1200), np.arange(1200), 200)
  (x2, _), (vx2, _) = data.split_validation(np.arange(1200), np.arange(1200), 200)
  assert np.array_equal(vx, vx2) and np.array_equal(x, x2)
  assert sorted(np.concatenate([x, vx]).tolist()) == list(range(1200))


def test_uncompressed_idx_and_a_dataset_subdirectory(tmp_path, idx_dir):
  sub = tmp_path / 'store' / 'mnist'
  sub.mkdir(parents=True)
  for name in [n for n in os.listdir(idx_dir) if n.endswith('.gz')]:
    with gzip.open(idx_dir / name) as f:
      (sub / name.removesuffix('.gz')).write_bytes(f.read())
  assert data.find_idx_dir(str(tmp_path / 'store'), 'mnist') == str(sub)
  x, y = data.load_idx_split(str(sub), 'test', data.DATASETS['mnist'])
  assert x.shape == (300, 28, 28, 1) and y.shape == (300,)


def test_environment_variable_names_the_directory(idx_dir, monkeypatch):
  data.load.cache_clear()
  monkeypatch.setenv(data.IDX_DIR_ENV, str(idx_dir))
  ds = data.load(DataConfig(dataset='kmnist', source='auto', validation_size=100))
  assert ds.source == f'idx:{idx_dir}'


@pytest.mark.parametrize('corruption, message', [
    (lambda raw: raw[:len(raw) // 2], 'truncated or corrupt'),
    (lambda raw: b'\x00\x00\x09\x03' + raw[4:], 'magic bytes 00 00 08 NDIM, found 00 00 09 03'),
    (lambda raw: raw[:10], 'truncated header'),
])
def test_corrupt_idx_files_name_the_file_and_the_problem(tmp_path, corruption, message):
  path = tmp_path / 'train-images-idx3-ubyte'
  write_idx(path, np.zeros((5, 28, 28)), compress=False)
  path.write_bytes(corruption(path.read_bytes()))
  with pytest.raises(ValueError, match='train-images-idx3-ubyte') as e:
    data.read_idx(str(path))
  assert message in str(e.value)


def test_truncated_gzip_names_the_file(tmp_path):
  path = tmp_path / 't10k-labels-idx1-ubyte.gz'
  write_idx(path, np.zeros(100))
  path.write_bytes(path.read_bytes()[:30])
  with pytest.raises(ValueError, match=r't10k-labels-idx1-ubyte.gz: cannot read it'):
    data.read_idx(str(path))


def test_labels_that_do_not_match_the_images(idx_dir):
  write_idx(idx_dir / 'train-labels-idx1-ubyte.gz', np.zeros(7))
  with pytest.raises(ValueError, match='expected 1200 labels'):
    data.load_idx_split(str(idx_dir), 'train', data.DATASETS['mnist'])


def test_no_data_anywhere_lists_the_ways_to_get_it(tmp_path):
  data.load.cache_clear()
  with pytest.raises(ValueError) as e:
    data.load(DataConfig(dataset='kmnist', source='idx', idx_dir=str(tmp_path)))
  text = str(e.value)
  assert "no data for dataset='kmnist'" in text
  assert str(tmp_path) in text and '--idx_dir' in text and 'LENET_JAX_IDX_DIR' in text
  assert 'tfds.load' in text


def test_unknown_dataset():
  with pytest.raises(ValueError, match=r"dataset='imagenet' is unknown; choose one of"):
    data.dataset_info('imagenet')


def test_tfds_path_under_mock_data():
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  data.load.cache_clear()
  with tfds.testing.mock_data(num_examples=40):
    ds = data.load(DataConfig(dataset='mnist', source='tfds', validation_size=10))
  assert ds.source == 'tfds'
  assert ds.train_images.shape == (30, 28, 28, 1) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (40, 28, 28, 1)
  assert ds.train_labels.max() < 10
