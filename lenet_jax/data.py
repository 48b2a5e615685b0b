"""Datasets held in memory as uint8 arrays: TFDS, or IDX files when TFDS cannot download.

Images stay uint8 (N, H, W, C) on the host and on the device; the train and
eval steps scale them to [0, 1] on the device. A fixed validation split
(independent of the run's seed, so every run of a sweep selects on the same
examples) is carved from the training split; the test split is kept apart.

Where the data comes from (`DataConfig.source`):
  'tfds': tensorflow-datasets (prepared data, or a download).
  'idx':  a directory of IDX files, the format the MNIST family ships in.
  'auto': an IDX directory named by the config or $LENET_JAX_IDX_DIR, else
          TFDS data already prepared, else a known system IDX directory
          (Debian's dataset-fashion-mnist), else a TFDS download.
Data is never replaced by anything else: when no source works, the error
lists the ways to get it.
"""
import dataclasses
import functools
import gzip
import logging
import os

import numpy as np

from lenet_jax.config import DataConfig

IDX_DIR_ENV = 'LENET_JAX_IDX_DIR'


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  input_shape: tuple[int, int, int]
  num_classes: int
  idx: bool  # ships as IDX files


DATASETS = {
    'mnist': DatasetInfo((28, 28, 1), 10, True),
    'fashion_mnist': DatasetInfo((28, 28, 1), 10, True),
    'kmnist': DatasetInfo((28, 28, 1), 10, True),
    'cifar10': DatasetInfo((32, 32, 3), 10, False),
}

# Directories that system packages install IDX files into.
SYSTEM_IDX_DIRS = {'fashion_mnist': '/usr/share/datasets/fashion-mnist'}

IDX_FILES = {  # split -> (images, labels), with or without .gz
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train/validation/test arrays: images uint8 (N, H, W, C), labels int32 (N,)."""
  name: str
  source: str  # where it was read from, e.g. 'idx:/usr/share/datasets/fashion-mnist'
  train_images: np.ndarray
  train_labels: np.ndarray
  val_images: np.ndarray
  val_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray


def dataset_info(name: str) -> DatasetInfo:
  if name not in DATASETS:
    raise ValueError(f'dataset={name!r} is unknown; choose one of {sorted(DATASETS)}.')
  return DATASETS[name]


# ----------------------------------------------------------------------------
# IDX files


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (optionally gzipped) of unsigned bytes, checking its header."""
  try:
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
      raw = f.read()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise ValueError(f'{path}: cannot read it ({e}); the file is corrupt or '
                     'truncated. Download it again (or reinstall the package '
                     'that provides it).') from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise ValueError(f'{path}: not an IDX file of unsigned bytes: expected the '
                     f'magic bytes 00 00 08 NDIM, found {raw[:4].hex(" ")}.')
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f'{path}: truncated header: {ndim} dimensions need {header} '
                     f'bytes, the file has {len(raw)}.')
  dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  expected = int(np.prod(dims)) + header
  if len(raw) != expected:
    raise ValueError(f'{path}: header says shape {dims}, so {expected} bytes, but '
                     f'the data has {len(raw)} bytes: the file is truncated or '
                     'corrupt. Download it again.')
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _idx_path(directory: str, stem: str) -> str | None:
  for name in (stem + '.gz', stem):
    if os.path.isfile(os.path.join(directory, name)):
      return os.path.join(directory, name)
  return None


def find_idx_dir(directory: str, dataset: str) -> str | None:
  """`directory` or `directory/dataset` if it holds all four IDX files."""
  for candidate in (os.path.join(directory, dataset), directory):
    if all(_idx_path(candidate, stem) for pair in IDX_FILES.values() for stem in pair):
      return candidate
  return None


def load_idx_split(directory: str, split: str, info: DatasetInfo):
  images_stem, labels_stem = IDX_FILES[split]
  images_path = _idx_path(directory, images_stem)
  labels_path = _idx_path(directory, labels_stem)
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.ndim != 3 or images.shape[1:] != info.input_shape[:2]:
    raise ValueError(f'{images_path}: expected images of shape (N, '
                     f'{info.input_shape[0]}, {info.input_shape[1]}), found {images.shape}.')
  if labels.ndim != 1 or len(labels) != len(images):
    raise ValueError(f'{labels_path}: expected {len(images)} labels to match '
                     f'{images_path}, found shape {labels.shape}.')
  if labels.max(initial=0) >= info.num_classes:
    raise ValueError(f'{labels_path}: label {labels.max()} is out of range for '
                     f'{info.num_classes} classes.')
  return images[..., None], labels.astype(np.int32)


# ----------------------------------------------------------------------------
# TFDS


def _tfds_prepared(name: str, data_dir: str | None) -> bool:
  """Whether TFDS holds prepared data for `name`, checked without importing TF."""
  root = data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.expanduser(
      '~/tensorflow_datasets')
  return os.path.isdir(os.path.join(root, name))


def load_tfds_split(name: str, split: str, data_dir: str | None, download: bool):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  ds = tfds.load(name, split=split, as_supervised=True, data_dir=data_dir,
                 download=download)
  # Batched iteration, not batch_size=-1: the latter aborts TF under tfds.testing.mock_data.
  chunks = list(tfds.as_numpy(ds.batch(8192)))
  images = np.concatenate([x for x, _ in chunks])
  labels = np.concatenate([y for _, y in chunks])
  return images.astype(np.uint8), labels.astype(np.int32)


# ----------------------------------------------------------------------------
# Choosing a source


def _no_data_error(name: str, cfg: DataConfig, tried: list[str]) -> ValueError:
  ways = [f'let TFDS download it (needs internet): python -c "import '
          f"tensorflow_datasets as tfds; tfds.load('{name}')\"",
          'or point --tfds_data_dir at a directory with prepared TFDS data']
  if DATASETS[name].idx:
    ways.append(f'or put its four IDX files (train-images-idx3-ubyte.gz, ...) in '
                f'a directory and pass --idx_dir=DIR or set ${IDX_DIR_ENV}=DIR')
  if name in SYSTEM_IDX_DIRS:
    ways.append(f'or install the system package: apt-get install '
                f'dataset-{name.replace("_", "-")} (files in {SYSTEM_IDX_DIRS[name]})')
  return ValueError(f'no data for dataset={name!r}. Tried: ' + '; '.join(tried) +
                    '. To get it: ' + '; '.join(ways) + '.')


def _read_splits(name: str, cfg: DataConfig):
  """(source, (train_images, train_labels), (test_images, test_labels))."""
  info = dataset_info(name)
  tried = []
  idx_dir = cfg.idx_dir or os.environ.get(IDX_DIR_ENV)
  if cfg.source in ('idx', 'auto') and idx_dir:
    found = find_idx_dir(idx_dir, name)
    if found:
      return (f'idx:{found}', load_idx_split(found, 'train', info),
              load_idx_split(found, 'test', info))
    tried.append(f'IDX files in {idx_dir!r} (or {os.path.join(idx_dir, name)!r}): not all four found')
  if cfg.source in ('tfds', 'auto') and _tfds_prepared(name, cfg.tfds_data_dir):
    return ('tfds', load_tfds_split(name, 'train', cfg.tfds_data_dir, False),
            load_tfds_split(name, 'test', cfg.tfds_data_dir, False))
  if cfg.source in ('idx', 'auto') and name in SYSTEM_IDX_DIRS:
    found = find_idx_dir(SYSTEM_IDX_DIRS[name], name)
    if found:
      return (f'idx:{found}', load_idx_split(found, 'train', info),
              load_idx_split(found, 'test', info))
    tried.append(f'IDX files in {SYSTEM_IDX_DIRS[name]!r}: not found')
  if cfg.source in ('tfds', 'auto'):
    try:
      return ('tfds', load_tfds_split(name, 'train', cfg.tfds_data_dir, True),
              load_tfds_split(name, 'test', cfg.tfds_data_dir, True))
    except Exception as e:  # pylint: disable=broad-except
      tried.append(f'a TFDS download: {type(e).__name__}: {str(e)[:300]}')
  if cfg.source == 'idx' and not idx_dir and name not in SYSTEM_IDX_DIRS:
    tried.append('IDX files: no directory given')
  raise _no_data_error(name, cfg, tried)


def split_validation(images, labels, validation_size: int):
  """A fixed split (seed 0, whatever the run's seed): (train, validation) pairs."""
  if validation_size >= len(images):
    raise ValueError(f'validation_size={validation_size} leaves no training data '
                     f'({len(images)} training examples); use a smaller value.')
  order = np.random.default_rng(0).permutation(len(images))
  val, train = np.sort(order[:validation_size]), np.sort(order[validation_size:])
  return (images[train], labels[train]), (images[val], labels[val])


@functools.lru_cache(maxsize=4)
def load(cfg: DataConfig) -> Dataset:
  """Loads `cfg.dataset` once per process and splits off the validation set."""
  info = dataset_info(cfg.dataset)
  source, (train_x, train_y), (test_x, test_y) = _read_splits(cfg.dataset, cfg)
  for split, x in (('train', train_x), ('test', test_x)):
    if x.shape[1:] != info.input_shape:
      raise ValueError(f'{cfg.dataset} {split} images from {source} have shape '
                       f'{x.shape[1:]}, expected {info.input_shape}.')
  (train_x, train_y), (val_x, val_y) = split_validation(train_x, train_y,
                                                        cfg.validation_size)
  logging.info('dataset %s from %s: %d train, %d validation, %d test', cfg.dataset,
               source, len(train_x), len(val_x), len(test_x))
  return Dataset(cfg.dataset, source, train_x, train_y, val_x, val_y, test_x, test_y)
