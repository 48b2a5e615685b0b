"""Prepares a TFDS dataset offline, from local copies of the files it downloads.

  python -m lenet_jax.tfds_offline --dataset=fashion_mnist \
      --idx_dir=/usr/share/datasets/fashion-mnist [--data_dir=DIR]

TFDS's own builder extracts, parses and writes the dataset; only its download
step is served from local files, through TFDS's manual directory
(`tfds.download.DownloadConfig(manual_dir=...)`). TFDS registers a size and a
sha256 for every file a dataset downloads and checks the file it finds there
against them, so the data it prepares comes from exactly the bytes it would
have downloaded. Nothing is downloaded: every registered file must be present.

Debian's dataset-fashion-mnist ships upstream's .gz files with a normalized
gzip header (no stored file name; the package's changelog date as time stamp),
so their sha256 differs from the registered one. The compressed stream and the
gzip trailer (CRC-32 and length of the uncompressed data) are upstream's:
putting the file name and upstream's time stamp back into the header gives byte
for byte the file TFDS registers, and TFDS's sha256 then vouches for the
uncompressed data too. A file that matches neither way is refused: it is
corrupt, or another dataset's file under the same name (MNIST's and
Fashion-MNIST's have the same names and shapes).

Any dataset whose download is a set of registered files can be prepared this
way; fashion_mnist from Debian's files is the one tested.
"""
import hashlib
import os
import sys
import tempfile

from absl import app
from absl import flags

from lenet_jax.data import SYSTEM_IDX_DIRS

# Upstream's gzip time stamps, per dataset and file, for files whose header was
# normalized. Found once by searching for the time stamp with which the restored
# header reproduces TFDS's registered sha256 (all four: XFL 0, OS 3 as in
# Debian's files); each is checked against that sha256 every time it is used.
GZIP_MTIMES = {
    'fashion_mnist': {
        'train-images-idx3-ubyte.gz': 1504176606,  # 2017-08-31 10:50:06 UTC
        'train-labels-idx1-ubyte.gz': 1504176606,
        't10k-images-idx3-ubyte.gz': 1504176627,  # 2017-08-31 10:50:27 UTC
        't10k-labels-idx1-ubyte.gz': 1504176627,
    },
}

_GZIP_FNAME = 0x08  # header flag: a zero-terminated file name follows the 10 fixed bytes


def restore_gzip_header(raw: bytes, name: str, mtime: int) -> bytes | None:
  """`raw` with `name` stored and time stamp `mtime`; None if its header has extra fields.

  Only a bare 10-byte header (no flags set) is rewritten: anything else was not
  produced by the normalization this undoes.
  """
  if len(raw) < 18 or raw[:3] != b'\x1f\x8b\x08' or raw[3] != 0:
    return None
  return (raw[:3] + bytes([_GZIP_FNAME]) + mtime.to_bytes(4, 'little') + raw[8:10] +
          name.encode('latin-1') + b'\x00' + raw[10:])


def _sha256(raw: bytes) -> str:
  return hashlib.sha256(raw).hexdigest()


def _stage_file(dataset: str, url: str, expected, local: str, staging: str) -> None:
  """Puts `local`, or its restored form, in `staging` if it is the registered file.

  `expected` is TFDS's `UrlInfo` for `url` (size, sha256, filename).
  """
  with open(local, 'rb') as f:
    raw = f.read()
  target = os.path.join(staging, expected.filename)
  if len(raw) == expected.size and _sha256(raw) == expected.checksum:
    os.symlink(os.path.abspath(local), target)
    return
  found = f'{len(raw)} bytes, sha256 {_sha256(raw)[:16]}...'
  registered = f'{int(expected.size)} bytes, sha256 {expected.checksum[:16]}...'
  mtime = GZIP_MTIMES.get(dataset, {}).get(expected.filename)
  if mtime is None:
    raise ValueError(
        f'{local}: not the file TFDS downloads for {dataset} from {url} (found '
        f'{found}; registered {registered}). It is corrupt, a modified copy, or '
        f"another dataset's file with the same name. Put the original download "
        f'there.')
  restored = restore_gzip_header(raw, expected.filename.removesuffix('.gz'), mtime)
  if restored is None or _sha256(restored) != expected.checksum:
    raise ValueError(
        f'{local}: not the file TFDS downloads for {dataset} from {url}, even with '
        f"upstream's gzip header restored (found {found}; registered {registered}). "
        f'It is corrupt or truncated, or another dataset\'s file with the same '
        f'name. Reinstall it (e.g. apt-get install --reinstall '
        f'dataset-{dataset.replace("_", "-")}) or put the original download there.')
  with open(target, 'wb') as f:
    f.write(restored)


def stage_downloads(builder, files_dir: str, staging: str) -> None:
  """Fills `staging` with every file `builder` downloads, checked, from `files_dir`."""
  dataset = builder.name
  url_infos = builder.url_infos
  if not url_infos:
    raise ValueError(f'TFDS registers no download files for {dataset}, so they '
                     'cannot be given locally; prepare it with TFDS itself.')
  names = ', '.join(sorted(info.filename for info in url_infos.values()))
  if not os.path.isdir(files_dir):
    raise ValueError(f'--idx_dir={files_dir}: no such directory; {dataset} needs '
                     f'{names} in it' + _where(dataset))
  for url, expected in sorted(url_infos.items()):
    local = os.path.join(files_dir, expected.filename)
    if not os.path.isfile(local):
      raise ValueError(f'{local}: missing; {dataset} needs {names} in '
                       f'{files_dir}' + _where(dataset))
    _stage_file(dataset, url, expected, local, staging)


def _where(dataset: str) -> str:
  if dataset in SYSTEM_IDX_DIRS:
    return (f'; apt-get install dataset-{dataset.replace("_", "-")} (or bash '
            f'install.sh) puts them in {SYSTEM_IDX_DIRS[dataset]}.')
  return '; copy the files it downloads there.'


def prepare(dataset: str, files_dir: str, data_dir: str | None = None) -> str:
  """Prepares `dataset` in `data_dir` (TFDS's default if None) from `files_dir`.

  Returns the directory TFDS wrote (or had already written) the dataset to.
  Raises ValueError naming the file and the fix when a file is missing or is
  not the one TFDS registers.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    builder = tfds.builder(dataset, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f'--dataset={dataset}: TFDS has no such dataset '
                     f'({str(e).splitlines()[0]}).') from e
  with tempfile.TemporaryDirectory(prefix='tfds_offline_') as scratch:
    staging = os.path.join(scratch, 'manual')
    os.mkdir(staging)
    stage_downloads(builder, files_dir, staging)
    # A throwaway download_dir: the extracted copies TFDS makes are not kept.
    builder.download_and_prepare(
        download_dir=os.path.join(scratch, 'downloads'),
        download_config=tfds.download.DownloadConfig(
            manual_dir=staging,
            try_download_gcs=False,  # prepare from the local files, not a copy
            force_checksums_validation=True))  # no unregistered URL is fetched
  return builder.data_dir


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined on demand, not at import: lenet_jax.cli has a --dataset flag too."""
  flags.DEFINE_string('dataset', 'fashion_mnist', 'TFDS dataset name.')
  flags.DEFINE_string('idx_dir', None, 'Directory holding the files the dataset '
                      'downloads, under the names TFDS registers (for the MNIST '
                      'family: the four IDX .gz files).')
  flags.DEFINE_string('data_dir', None, 'Where TFDS writes the prepared dataset '
                      "(default: TFDS's, $TFDS_DATA_DIR or ~/tensorflow_datasets).")


def main(argv) -> int:
  if len(argv) > 1:
    print(f'error: unexpected arguments {argv[1:]}; pass --flag=value.', file=sys.stderr)
    return 2
  if not FLAGS.idx_dir:
    print('error: --idx_dir is required: the directory holding the files '
          f'{FLAGS.dataset} downloads (e.g. /usr/share/datasets/fashion-mnist).',
          file=sys.stderr)
    return 2
  try:
    path = prepare(FLAGS.dataset, FLAGS.idx_dir, FLAGS.data_dir)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{FLAGS.dataset} prepared in {path}')
  return 0


if __name__ == '__main__':
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
