"""animal_mnist: the animal-mnist 0.4 package's data files, checked, deduplicated and split."""
import gzip
import hashlib
import importlib.util
import pickle
import sys

import numpy as np
import pytest

from lenet_jax import data
from lenet_jax.config import DataConfig

needs_animal_mnist = pytest.mark.skipif(
    importlib.util.find_spec('animal_mnist') is None,
    reason=f'needs animal_mnist, not installed here; pip install --no-deps '
           f'{data.ANIMAL_MNIST_REQUIREMENT} (install.sh does)')


@pytest.fixture(scope='module')
def dataset():
  data.load.cache_clear()
  return data.load(DataConfig(dataset='animal_mnist'))


@needs_animal_mnist
def test_loads_with_a_fixed_deduplicated_split(dataset):
  ds = dataset
  assert ds.source.startswith('animal_mnist:') and ds.source.endswith('Animal_MNIST')
  for x, y, n in ((ds.train_images, ds.train_labels, 7016), (ds.val_images, ds.val_labels, 700),
                  (ds.test_images, ds.test_labels, 2000)):
    assert x.shape == (n, 28, 28, 1) and x.dtype == np.uint8
    assert y.shape == (n,) and y.dtype == np.int32 and 0 <= y.min() and y.max() <= 9
  assert np.bincount(ds.test_labels).tolist() == [200] * 10
  # Silhouettes: a black background, bright shapes.
  assert 40 < ds.train_images.mean() < 100 and (ds.train_images == 0).mean() > 0.5
  # No image twice, in a split or across them (the package has 284 duplicates).
  every = np.concatenate([ds.train_images, ds.val_images, ds.test_images]).reshape(-1, 784)
  assert len(every) == len(np.unique(every, axis=0)) == 9716
  # Loading again (a fresh load, and the raw split) gives the same data.
  source, _, (test_x, test_y) = data.load_animal_mnist()
  order = data.content_order(test_x, test_y)
  assert source == ds.source and np.array_equal(test_x[order], ds.test_images)
  data.load.cache_clear()
  assert data.load(DataConfig(dataset='animal_mnist')).fingerprint == ds.fingerprint
  assert 'tensorflow' not in sys.modules and 'animal_mnist' not in sys.modules
  with pytest.raises(ValueError, match="ships in a Python package only; use source='auto'"):
    data.load(DataConfig(dataset='animal_mnist', source='idx'))


@needs_animal_mnist
def test_deduplication_keeps_the_first_copy_of_each_image():
  images, labels, _ = data.animal_mnist_deduplicated()
  path = data._package_file('animal_mnist', 'data', 'Animal_MNIST', 'animal_data_version_3.gz')
  with gzip.open(path) as f:
    raw = pickle.load(f)  # the file whose sha256 the loader checked, read as the package does
  flat = raw.reshape(len(raw), -1)
  _, first = np.unique(flat, axis=0, return_index=True)
  assert len(raw) - len(first) == 284
  assert np.array_equal(images[..., 0], raw[np.sort(first)])
  assert np.all(np.diff(labels) >= 0)  # the package's order (sorted by class) is kept


def test_a_missing_package_names_the_install_command(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'animal_mnist' else real(name, *a))
  with pytest.raises(ValueError, match=r"'animal_mnist' is not installed; install it with "
                                       r'`pip install --no-deps animal-mnist==0.4`'):
    data.load_animal_mnist()


class _Evil:
  def __reduce__(self):
    return (print, ('unpickled',))


def test_a_changed_file_is_not_unpickled(tmp_path, capsys):
  good = tmp_path / 'good.gz'
  good.write_bytes(gzip.compress(pickle.dumps(np.arange(6, dtype=np.uint8))))
  digest = hashlib.sha256(good.read_bytes()).hexdigest()
  assert data._read_animal_mnist_file(str(good), digest).tolist() == list(range(6))
  with pytest.raises(ValueError, match=r'expected 0{64} .*It is a pickle, so it is not '
                                       r'read.*pip install --force-reinstall --no-deps '
                                       r'animal-mnist==0.4'):
    data._read_animal_mnist_file(str(good), '0' * 64)
  # Even with a matching hash, only numpy arrays are unpickled.
  evil = tmp_path / 'evil.gz'
  evil.write_bytes(gzip.compress(pickle.dumps(_Evil())))
  with pytest.raises(ValueError, match='refusing to unpickle builtins.print'):
    data._read_animal_mnist_file(str(evil), hashlib.sha256(evil.read_bytes()).hexdigest())
  assert 'unpickled' not in capsys.readouterr().out
