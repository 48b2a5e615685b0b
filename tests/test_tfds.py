"""The TFDS path on real data, offline: TFDS's own fashion_mnist builder prepares
Debian's Fashion-MNIST files, and what it loads equals the IDX path.

Everything is prepared into pytest's temporary directories, never into
~/tensorflow_datasets: the 'auto' source prefers prepared TFDS data, so data
there would change what other tests and users load.
"""
import hashlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import requires
from lenet_jax import data
from lenet_jax import tfds_offline
from lenet_jax.config import DataConfig

# TFDS prepares and loads datasets with TensorFlow: the `data` extra.
pytestmark = requires('tensorflow_datasets', 'tensorflow')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
         't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')


@pytest.fixture(scope='session')
def debian_dir():
  directory = data.SYSTEM_IDX_DIRS['fashion_mnist']
  missing = [f for f in FILES if not os.path.isfile(os.path.join(directory, f))]
  if missing:
    pytest.fail(f'{directory} lacks {", ".join(missing)}: these tests need the real '
                "Fashion-MNIST files. Run bash install.sh (it installs Debian's "
                'dataset-fashion-mnist).')
  return directory


def _run_cli(*args):
  return subprocess.run(
      [sys.executable, '-m', 'lenet_jax.tfds_offline', *args], capture_output=True,
      text=True, timeout=600, cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT})


@pytest.fixture(scope='session')
def tfds_dir(debian_dir, tmp_path_factory):
  """fashion_mnist prepared once for this module, by the command line."""
  data_dir = tmp_path_factory.mktemp('tfds_data')
  start = time.perf_counter()
  proc = _run_cli('--dataset=fashion_mnist', f'--idx_dir={debian_dir}',
                  f'--data_dir={data_dir}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'fashion_mnist prepared in {data_dir}/fashion_mnist/3.0.1' in proc.stdout
  print(f'\nfashion_mnist prepared by TFDS in {time.perf_counter() - start:.1f} s')
  return str(data_dir)


def _sorted_examples(images, labels) -> bytes:
  """(image, label) pairs in a canonical order, as bytes.

  TFDS stores examples in its own order (sorted by a hash of their keys), so the
  sources agree as collections of examples, not position by position.
  """
  assert labels.max() < 256
  rows = np.concatenate([labels.astype(np.uint8)[:, None],
                         images.reshape(len(images), -1)], axis=1)
  return np.sort(np.ascontiguousarray(rows).view(f'V{rows.shape[1]}').ravel()).tobytes()


def test_tfds_load_gives_the_examples_of_the_idx_files(debian_dir, tfds_dir):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  info = data.DATASETS['fashion_mnist']
  for split, n in (('train', 60000), ('test', 10000)):
    images, labels = tfds.as_numpy(tfds.load(
        'fashion_mnist', split=split, data_dir=tfds_dir, download=False,
        as_supervised=True, batch_size=-1))
    idx_images, idx_labels = data.load_idx_split(debian_dir, split, info)
    assert images.shape == idx_images.shape == (n, 28, 28, 1)
    assert images.dtype == np.uint8
    assert _sorted_examples(images, labels) == _sorted_examples(idx_images, idx_labels)


def test_data_load_from_tfds_equals_the_idx_source(debian_dir, tfds_dir):
  data.load.cache_clear()
  common = dict(dataset='fashion_mnist', validation_size=5000)
  from_tfds = data.load(DataConfig(source='tfds', tfds_data_dir=tfds_dir, **common))
  from_idx = data.load(DataConfig(source='idx', idx_dir=debian_dir, **common))
  assert from_tfds.source == 'tfds' and from_idx.source == f'idx:{debian_dir}'
  for ds in (from_tfds, from_idx):
    assert (len(ds.train_images), len(ds.val_images), len(ds.test_images)) == (
        55000, 5000, 10000)
  # TFDS stores examples in another order than the IDX files; the splits are made
  # in a canonical content order, so both sources give the same arrays, position
  # by position, and a run trains on the same batches from either.
  for name in ('train_images', 'train_labels', 'val_images', 'val_labels', 'test_images',
               'test_labels'):
    np.testing.assert_array_equal(getattr(from_tfds, name), getattr(from_idx, name))
  assert from_tfds.fingerprint == from_idx.fingerprint


def test_tfds_itself_refuses_debians_files_as_they_are(debian_dir, tmp_path):
  """Why the gzip headers are restored: TFDS checks the sha256 of the .gz bytes."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builder = tfds.builder('fashion_mnist', data_dir=str(tmp_path / 'data'))
  with pytest.raises(tfds.download.download_manager.NonMatchingChecksumError,
                     match='has wrong checksum'):
    builder.download_and_prepare(
        download_dir=str(tmp_path / 'downloads'),
        download_config=tfds.download.DownloadConfig(
            manual_dir=debian_dir, try_download_gcs=False))


def _copy_of_debian_dir(debian_dir, tmp_path, leave_out=()):
  directory = tmp_path / 'files'
  directory.mkdir()
  for name in FILES:
    if name not in leave_out:
      os.symlink(os.path.join(debian_dir, name), directory / name)
  return directory


def test_a_missing_file_is_named_with_the_fix(debian_dir, tmp_path):
  files = _copy_of_debian_dir(debian_dir, tmp_path,
                              leave_out=['train-labels-idx1-ubyte.gz'])
  with pytest.raises(ValueError) as e:
    tfds_offline.prepare('fashion_mnist', str(files), str(tmp_path / 'data'))
  assert f'{files}/train-labels-idx1-ubyte.gz: missing' in str(e.value)
  assert 'apt-get install dataset-fashion-mnist' in str(e.value)
  assert not (tmp_path / 'data' / 'fashion_mnist').exists()


@pytest.mark.parametrize('corrupt', [
    lambda raw: raw[:-1000],  # a truncated copy
    lambda raw: raw[:100_000] + bytes([raw[100_000] ^ 1]) + raw[100_001:],
], ids=['truncated', 'one_bit_flipped'])
def test_a_corrupt_file_is_named_and_refused(debian_dir, tmp_path, corrupt):
  files = _copy_of_debian_dir(debian_dir, tmp_path,
                              leave_out=['train-images-idx3-ubyte.gz'])
  with open(os.path.join(debian_dir, 'train-images-idx3-ubyte.gz'), 'rb') as f:
    (files / 'train-images-idx3-ubyte.gz').write_bytes(corrupt(f.read()))
  with pytest.raises(ValueError) as e:
    tfds_offline.prepare('fashion_mnist', str(files), str(tmp_path / 'data'))
  assert (f'{files}/train-images-idx3-ubyte.gz: not the file TFDS downloads for '
          'fashion_mnist') in str(e.value)
  assert "even with upstream's gzip header restored" in str(e.value)
  assert not (tmp_path / 'data' / 'fashion_mnist').exists()


def test_fashion_mnist_files_are_not_taken_for_mnist(debian_dir, tmp_path):
  """Same file names and shapes; only TFDS's registered checksums tell them apart."""
  with pytest.raises(ValueError, match=r"not the file TFDS downloads for mnist .*"
                     r"another dataset's file with the same name"):
    tfds_offline.prepare('mnist', debian_dir, str(tmp_path / 'data'))
  assert not (tmp_path / 'data' / 'mnist').exists()


def test_restoring_the_header_reproduces_tfds_file(debian_dir):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  registered = {info.filename: info
                for info in tfds.builder_cls('fashion_mnist').url_infos.values()}
  name = 't10k-labels-idx1-ubyte.gz'
  with open(os.path.join(debian_dir, name), 'rb') as f:
    raw = f.read()
  restored = tfds_offline.restore_gzip_header(
      raw, name.removesuffix('.gz'), tfds_offline.GZIP_MTIMES['fashion_mnist'][name])
  assert len(restored) == registered[name].size == len(raw) + len(name) - 2
  assert hashlib.sha256(restored).hexdigest() == registered[name].checksum
  # A header that is not bare is not rewritten.
  assert tfds_offline.restore_gzip_header(restored, 'x', 0) is None


def test_bad_input_exits_2_with_one_message(tmp_path):
  proc = _run_cli('--dataset=fashion_mnist', f'--idx_dir={tmp_path}/nowhere',
                  f'--data_dir={tmp_path}/data')
  assert proc.returncode == 2
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      f'error: --idx_dir={tmp_path}/nowhere: no such directory; fashion_mnist needs '
      't10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, train-images-idx3-ubyte.gz, '
      'train-labels-idx1-ubyte.gz in it; apt-get install dataset-fashion-mnist')
  proc = _run_cli('--dataset=fashion_mnist')
  assert proc.returncode == 2 and proc.stderr.startswith('error: --idx_dir is required')
