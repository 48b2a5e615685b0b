"""The work directory's files: one module reads and writes them all.

A workdir holds one sweep (python run.py ... --workdir=DIR; the experiments
use the same layout):

  sweep.json                    the sweep (`sweep.describe`) and how its groups
                                train (`execution`), so a workdir holds one
                                sweep, trained one way
  .lock, .lock.shard-I-of-N     held while a process trains (workdir.py owns them)
  groups/<group_id>/             orbax checkpoints of a group of runs trained together
                                (checkpoint.py writes inside it), while it trains;
                                removed once its runs are written
  runs/<run_id>/config.json     the run's full configuration
  runs/<run_id>/variables.msgpack       the final model ({'params', batch statistics}),
  runs/<run_id>/best_variables.msgpack  and the one of the best validation accuracy
                                (flax.serialization msgpack)
  runs/<run_id>/metrics.jsonl   one JSON line per epoch
  runs/<run_id>/test_correct.bits  per test example, whether the best model on
                                validation is right (`read_test_correct`): an
                                8-byte little-endian count n, then the n bits
                                (np.packbits, big-endian within a byte, zero
                                padded); not for a diverged run
  runs/<run_id>/tensorboard/    event files: scalars per epoch and the hyperparameters
  runs/<run_id>/params.msgpack  an experiment's kept final parameters (`write_params`)
  runs/<run_id>/extra.json      an experiment's extra metrics of the run (`write_extra`)
  runs/<run_id>/final.json      status, final metrics, data source and split sizes,
                                parameters, FLOPs, seconds; written last, it marks
                                the run finished
  results.jsonl, results.csv    one row per run, rebuilt from the runs' files at the
                                start and after each group
                                (results.shard-I-of-N.* for a shard; sweep.merge
                                joins them)
  report/                       the report (lenet_jax.report), written whole
  runs.jsonl.gz                 finished runs packed into one file (`pack`): one
                                JSON line per run holding its files, read as if
                                they were under runs/<run_id>/ (a run directory,
                                when there is one too, wins); the experiments'
                                committed results are stored so

A run whose files cannot be read back (or belong to another run) is moved
aside to runs/<run_id>.unreadable-<time> and trained again. (The module is
longer than the others because it is the only one that knows these names and
formats.) Every file is
written atomically (workdir.atomic_write): a reader sees the old file or the
whole new one.
"""
import base64
import concurrent.futures
import contextlib
import csv
import functools
import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from flax import serialization

from lenet_jax import arch
from lenet_jax import config as config_lib
from lenet_jax import loop
from lenet_jax import summaries
from lenet_jax import workdir as workdir_lib
from lenet_jax.config import Config, run_id
from lenet_jax.workdir import atomic_write

SWEEP_FILE = 'sweep.json'
RESULTS = 'results'  # results.jsonl and results.csv; a shard's add .shard-I-of-N
RUNS_DIR, GROUPS_DIR, REPORT_DIR = 'runs', 'groups', 'report'
CONFIG_FILE, METRICS_FILE, FINAL_FILE = 'config.json', 'metrics.jsonl', 'final.json'
TENSORBOARD_DIR = 'tensorboard'
PARAMS_FILE, EXTRA_FILE = 'params.msgpack', 'extra.json'  # written by the experiments
TEST_CORRECT_FILE = 'test_correct.bits'  # written by write_run (RunResult.test_correct)
ARCHIVE_FILE = 'runs.jsonl.gz'
# What `pack` keeps of a run: its text files as they are, its binary ones in base64.
PACKED_FILES = (CONFIG_FILE, METRICS_FILE, FINAL_FILE, EXTRA_FILE)
PACKED_BINARY = (PARAMS_FILE, TEST_CORRECT_FILE)


def group_dir(workdir: str, members: Sequence[Config]) -> str:
  """Where a group of runs (the whole group, finished members included) keeps its
  checkpoints: named by a hash of its run ids."""
  blob = ','.join(run_id(c) for c in members)
  return os.path.join(workdir, GROUPS_DIR, hashlib.sha256(blob.encode()).hexdigest()[:12])


def _flat(d: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = ','.join(map(str, v)) if isinstance(v, (list, tuple)) else v
  return out


def result_row(res: loop.RunResult) -> dict[str, Any]:
  """One row of results.csv: the configuration, size and final metrics of a run."""
  facts = arch.totals(res.config.model)
  final = res.final
  row = {'run_id': run_id(res.config), 'status': res.status,
         'diverged_epoch': res.diverged_epoch, 'params': facts['params'],
         'flops': facts['flops'], 'epochs_run': len(res.history)}
  for key in ('train_loss', 'train_acc', 'val_loss', 'val_acc', 'test_loss', 'test_acc'):
    row[key] = final.get(key) if res.status == 'ok' else None
  best = res.best_epoch if res.status == 'ok' else None
  row['best_epoch'] = best
  for key in ('val_loss', 'val_acc', 'test_loss', 'test_acc'):
    row[f'best_{key}'] = res.history[best - 1].get(key) if best else None
  rates = [h['images_per_s'] for h in res.history[1:]] or [h['images_per_s'] for h in res.history]
  row['images_per_s'] = sorted(rates)[len(rates) // 2] if rates else None
  row['train_seconds'] = res.train_seconds
  row['compile_seconds'] = res.compile_seconds
  row.update(res.facts)  # the data it trained on, and how it was trained
  row.update(_flat(config_lib.to_dict(res.config)))
  return row


def run_dir(workdir: str, cfg: Config) -> str:
  return os.path.join(workdir, RUNS_DIR, run_id(cfg))


# config, metrics, final.json and TensorBoard files of a run; its models on top
RUN_FILES_BYTES = 256 * 1024


# A finished run's models (flax.serialization msgpack of {'params', ...}).
VARIABLES_FILE, BEST_VARIABLES_FILE = 'variables.msgpack', 'best_variables.msgpack'


def read_variables(directory: str, best: bool = False) -> dict[str, Any]:
  """The final model of the run in `directory` (runs/<run_id>, see `run_dir`), or
  its best one on validation: {'params', ...} as host arrays."""
  with open(os.path.join(directory, BEST_VARIABLES_FILE if best else VARIABLES_FILE),
            'rb') as f:
    return serialization.msgpack_restore(f.read())


class Unreadable(ValueError):
  """A finished run's files cannot be read back, or belong to another run."""


def read_finished(workdir: str, cfg: Config,
                  fingerprint: str | None = None) -> dict[str, Any] | None:
  """The results row of a run that finished in `workdir`; None if it has not.

  Raises Unreadable (naming the file) when final.json, config.json or
  metrics.jsonl cannot be parsed or do not belong to `cfg`'s run, or when
  the run trained on data other than `fingerprint` (if given) says.
  """
  rid = run_id(cfg)
  where = os.path.join(run_dir(workdir, cfg), '')
  if read_run_file(workdir, rid, FINAL_FILE) is None:
    return None
  if not os.path.isdir(where):
    where = f'{os.path.join(workdir, ARCHIVE_FILE)}[{rid}]/'

  def parse(name, parse_fn):
    text = read_run_file(workdir, rid, name)
    try:
      if text is None:
        raise OSError(f'no {name}')
      return parse_fn(text.decode())
    except (OSError, ValueError) as e:
      raise Unreadable(f'{where}{name} cannot be read ({type(e).__name__}: {str(e)[:120]})'
                       ) from None

  row = parse(FINAL_FILE, json.loads)
  if not isinstance(row, dict) or row.get('run_id') != rid:
    got = row.get('run_id') if isinstance(row, dict) else None
    raise Unreadable(f'{where}{FINAL_FILE} belongs to run {got!r}, not to {rid} (a copied '
                     'file?)')
  recorded = parse(CONFIG_FILE, json.loads)
  if not isinstance(recorded, dict) or config_lib.identity(recorded) != config_lib.identity(cfg):
    raise Unreadable(f'{where}{CONFIG_FILE} is not the config of run {rid}')
  history = parse(METRICS_FILE, lambda t: [json.loads(l) for l in t.splitlines() if l])
  if len(history) != row.get('epochs_run'):
    raise Unreadable(f'{where}{METRICS_FILE} holds {len(history)} epochs, but final.json '
                     f'says {row.get("epochs_run")}')
  if fingerprint is not None and row.get('data_fingerprint') != fingerprint:
    raise Unreadable(f'{where}{FINAL_FILE} was trained on other data (fingerprint '
                     f'{row.get("data_fingerprint")}; {cfg.data.dataset} now loads as '
                     f'{fingerprint}: its files changed, or the run predates the split)')
  return row


def finished_row(workdir: str, cfg: Config, warn=print,
                 fingerprint: str | None = None) -> dict[str, Any] | None:
  """Like read_finished, but a run whose files are unreadable (or whose data is
  not today's) is moved aside (to runs/<id>.unreadable-<time>, with a warning)
  and counts as not finished."""
  try:
    return read_finished(workdir, cfg, fingerprint)
  except Unreadable as e:
    directory = run_dir(workdir, cfg)
    if not os.path.isdir(directory):  # packed: the new run's directory will stand before it
      warn(f'warning: {e}; training the run again')
      return None
    aside = f'{directory}.unreadable-{time.strftime("%Y%m%d-%H%M%S")}-{os.getpid()}'
    os.replace(directory, aside)
    try:  # a packed copy of the run, if there is one, is the run
      row = read_finished(workdir, cfg, fingerprint)
    except Unreadable:
      row = None
    warn(f'warning: {e}; moved the run to {aside}' + (
        ' and using its packed copy' if row else ' and training it again'))
    return row


def write_run(workdir: str, res: loop.RunResult, tensorboard: bool = False,
              models: bool = False) -> dict[str, Any]:
  """Writes a finished run's files; final.json last, since it marks the run done.

  `models`: its final and best models too (variables.msgpack,
  best_variables.msgpack), from `res.params` and `res.best`. The best model's
  per-example test correctness (`res.test_correct`) goes to test_correct.bits.
  """
  run_dir = os.path.join(workdir, RUNS_DIR, run_id(res.config))
  os.makedirs(run_dir, exist_ok=True)
  # Room for the run's files (and its event files): never half of them.
  models = models and res.params is not None
  model_bytes = 2 * 4 * arch.totals(res.config.model)['params'] if models else 0
  workdir_lib.require_space(run_dir, RUN_FILES_BYTES + 1024 * len(res.history) + model_bytes)
  atomic_write(os.path.join(run_dir, CONFIG_FILE),
                json.dumps(config_lib.to_dict(res.config), indent=2))
  atomic_write(os.path.join(run_dir, METRICS_FILE),
                ''.join(json.dumps(h) + '\n' for h in res.history))
  if models:
    for name, model in ((VARIABLES_FILE, {'params': res.params, **res.model_state}),
                        (BEST_VARIABLES_FILE, res.best and {
                            'params': res.best['params'], **res.best['model_state']})):
      if model:
        atomic_write(os.path.join(run_dir, name), serialization.msgpack_serialize(model))
  bits_path = os.path.join(run_dir, TEST_CORRECT_FILE)
  if res.test_correct is not None:
    atomic_write(bits_path, encode_bits(res.test_correct))
  elif os.path.exists(bits_path):  # an earlier run's, never this one's
    os.remove(bits_path)
  row = result_row(res)
  if tensorboard:
    summaries.write_run(os.path.join(run_dir, TENSORBOARD_DIR), res.history, row)
  atomic_write(os.path.join(run_dir, FINAL_FILE), json.dumps(row, indent=2))
  return row


# A group's runs are written by this many threads at once, since each file
# waits on its fsync: most useful where fsyncs are slow (a busy or network
# disk; benchmarks/write_cost.py, docs/engine.md).
WRITER_THREADS = 8


def write_runs(workdir: str, results: Sequence[loop.RunResult],
               tensorboard: bool = False) -> list[dict[str, Any]]:
  """`write_run` (models included) for each of `results`, in parallel; their rows."""
  write = functools.partial(write_run, workdir, tensorboard=tensorboard, models=True)
  with concurrent.futures.ThreadPoolExecutor(min(WRITER_THREADS, len(results))) as pool:
    return list(pool.map(write, results))


def write_results(workdir: str, rows: list[dict[str, Any]], name: str = RESULTS) -> None:
  atomic_write(os.path.join(workdir, f'{name}.jsonl'),
                ''.join(json.dumps(r) + '\n' for r in rows))
  columns = list(dict.fromkeys(k for r in rows for k in r))
  buf = io.StringIO()
  writer = csv.DictWriter(buf, columns)
  writer.writeheader()
  writer.writerows(rows)
  atomic_write(os.path.join(workdir, f'{name}.csv'), buf.getvalue())


def check_writable(workdir: str) -> None:
  probe = os.path.join(workdir, f'.write-test-{os.getpid()}')
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, 'w') as f:
      f.write('')
    os.remove(probe)
  except OSError as e:
    raise ValueError(f'--workdir={workdir} is not writable ({e.strerror}); choose '
                     'another directory.') from e


class UnreadableSweep(ValueError):
  """sweep.json exists but is not a sweep: `path`, and `reason` why not."""

  def __init__(self, path: str, reason: str, workdir: str):
    super().__init__(f'{path} cannot be read ({reason}); it records which sweep '
                     f'--workdir={workdir} holds. Restore it from a copy, or use a new '
                     '--workdir (the finished runs stay in runs/).')
    self.path, self.reason = path, reason


def read_sweep_json(workdir: str) -> dict[str, Any] | None:
  """The sweep recorded in `workdir` ({'base', 'axes', 'seeds', 'execution'}), None
  if there is none; UnreadableSweep if it cannot be read as one."""
  path = sweep_path(workdir)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      recorded = json.load(f)
    if not isinstance(recorded, dict):
      raise TypeError('not a JSON object')
    if not isinstance(recorded.get('axes', {}), dict) or not isinstance(
        recorded.get('seeds', []), list):
      raise TypeError('axes must be an object and seeds a list')
  except (OSError, ValueError, TypeError) as e:
    raise UnreadableSweep(path, f'{type(e).__name__}: {str(e)[:120]}', workdir) from None
  return recorded


def execution(stacked: bool, max_models: int) -> dict[str, Any]:
  """What, beyond the configs, decides a sweep's results to the last bit.

  In turn, every run computes exactly what it would alone. Stacked (vmap),
  a run's float arithmetic depends on how many models share its program, so
  the group size (`max_models`) and the devices they are spread over count too.
  In turn the group size is recorded all the same (`max_models=auto` resumes
  with it, so the groups, and their checkpoints, stay the same), but it binds
  nothing (see `_binding`).
  """
  if not stacked:
    return {'group_mode': 'in_turn', 'max_models': max_models}
  import jax  # pylint: disable=import-outside-toplevel
  return {'group_mode': 'vmap', 'max_models': max_models,
          'devices': jax.local_device_count()}


_FLAG_OF = {'group_mode': '--group_mode', 'max_models': '--max_models',
            'devices': 'the number of devices'}


def sweep_difference(recorded: dict[str, Any], described: dict[str, Any]) -> str:
  """The fields in which two `_describe`d sweeps differ, for a message (the first few)."""
  flat = lambda d: {'.'.join(k for k in (path, name) if k): v for path, sub in (
      ('', {'seeds': d.get('seeds')}), ('axes', d.get('axes') or {}),
      ('base', _flat(d.get('base') or {}))) for name, v in sub.items()}
  then, now = flat(recorded), flat(described)
  differ = [f'{k}: {then.get(k)!r} there, {now.get(k)!r} here'
            for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
  return '; '.join(differ[:4]) + ('; ...' if len(differ) > 4 else '')


def _binding(how: dict[str, Any]) -> dict[str, Any]:
  """The part of an `execution` record that decides results: in turn, the mode alone."""
  return {'group_mode': 'in_turn'} if how.get('group_mode') == 'in_turn' else how


def claim_workdir(workdir: str, described: dict[str, Any], how: dict[str, Any]) -> None:
  """Records a sweep (`sweep.describe`) and how it trains (`execution`) in
  `workdir`, refusing a workdir that holds another sweep or the same sweep
  trained another way."""
  check_writable(workdir)
  recorded = read_sweep_json(workdir)
  path = sweep_path(workdir)
  if recorded is None:
    atomic_write(path, json.dumps({**described, 'execution': how}, indent=2,
                                  sort_keys=True))
    return
  if {k: v for k, v in recorded.items() if k != 'execution'} != described:
    raise ValueError(f'--workdir={workdir} holds results of a different sweep '
                     f'({sweep_difference(recorded, described)}; see {path}); use a '
                     'new --workdir for this one, or the same flags as before to resume '
                     'that sweep.')
  before = recorded.get('execution', {})
  if before != how and _binding(before) == _binding(how):  # in turn, another group size
    atomic_write(path, json.dumps({**recorded, 'execution': how}, indent=2, sort_keys=True))
    return
  if before != how:
    differ = ', '.join(f'{_FLAG_OF[k]} {before.get(k)!r} then, {how.get(k)!r} now'
                       for k in sorted(set(before) | set(how)) if before.get(k) != how.get(k))
    was = ' '.join(f'{_FLAG_OF[k]}={v}' for k, v in before.items() if k != 'devices')
    raise ValueError(
        f'--workdir={workdir} was trained with group mode {before.get("group_mode")!r} '
        f'({differ}; see {path}). Runs trained in turn, or stacked in groups of another '
        'size, differ in the last bits of float arithmetic, so one sweep must not mix '
        f'them: resume with {was}, or use a new --workdir.')


def results_name(num_shards: int = 1, shard_index: int = 0) -> str:
  """The stem of the results files a process writes: the sweep's, or its shard's."""
  return RESULTS if num_shards == 1 else f'{RESULTS}.shard-{shard_index}-of-{num_shards}'


def results_paths(workdir: str, name: str) -> list[str]:
  return [os.path.join(workdir, f'{name}.{ext}') for ext in ('jsonl', 'csv')]


def rebuild_results(workdir: str, name: str, rows: list[dict[str, Any]]) -> None:
  """results.* from the runs' own files: never an old or damaged table left standing."""
  if rows:
    write_results(workdir, rows, name)
    return
  for path in results_paths(workdir, name):
    if os.path.exists(path):
      os.remove(path)



# ----------------------------------------------------------------------------
# Reading a workdir back (the report, the experiments)


def sweep_path(workdir: str) -> str:
  return os.path.join(workdir, SWEEP_FILE)


def read_results(workdir: str) -> list[dict[str, Any]]:
  """The rows of WORKDIR/results.jsonl, one per finished run, each with its 'workdir'."""
  if not os.path.isdir(workdir):
    raise ValueError(f'workdir {workdir!r} does not exist; give the --workdir a sweep wrote '
                     '(python run.py ... --workdir=DIR).')
  path = os.path.join(workdir, f'{RESULTS}.jsonl')
  if not os.path.isfile(path):
    shards = sorted(f for f in os.listdir(workdir)
                    if f.startswith(f'{RESULTS}.shard-') and f.endswith('.jsonl'))
    if shards:
      raise ValueError(f'{workdir} holds shard results ({", ".join(shards)}) but no '
                       f"{RESULTS}.jsonl; gather them first: python run.py <the sweep's "
                       'flags> --merge.')
    raise ValueError(f'{workdir} has no {RESULTS}.jsonl, so no run has finished there; run '
                     f'python run.py ... --workdir={workdir} first.')
  rows = []
  with open(path) as f:
    for number, line in enumerate(f, start=1):
      if line.strip():
        try:
          rows.append({**json.loads(line), 'workdir': workdir})
        except ValueError as e:
          raise ValueError(f'{path} line {number} is not JSON ({e}); rewrite the file with '
                           "python run.py <the sweep's flags> --merge.") from e
  if not rows:
    raise ValueError(f'{path} is empty; no run has finished in {workdir} yet.')
  return rows


def read_config(workdir: str, rid: str) -> Config:
  """The configuration run `rid` trained with (its config.json)."""
  data = read_run_file(workdir, rid, CONFIG_FILE)
  if data is None:
    raise FileNotFoundError(f'{os.path.join(workdir, RUNS_DIR, rid)} has no {CONFIG_FILE}')
  return config_lib.from_dict(json.loads(data))


def read_history(workdir: str, rid: str) -> list[dict[str, Any]] | None:
  """A run's metrics.jsonl (one dict per epoch), None if it is missing or unreadable."""
  text = read_run_file(workdir, rid, METRICS_FILE)
  try:
    return None if text is None else [json.loads(l) for l in text.decode().splitlines() if l]
  except ValueError:
    return None


def _run_dirs(workdir: str) -> list[str]:
  directory = os.path.join(workdir, RUNS_DIR)
  return sorted(d for d in (os.listdir(directory) if os.path.isdir(directory) else [])
                if '.' not in d)  # not the moved-aside '*.unreadable-*'


def run_ids(workdir: str) -> list[str]:
  """The runs of `workdir`: its run directories and its packed runs."""
  return sorted(set(_run_dirs(workdir)) | set(_archive(workdir)))


# ----------------------------------------------------------------------------
# A run's extra files (the experiments keep some runs' parameters and metrics)


def write_params(workdir: str, cfg: Config, params) -> None:
  """The run's final parameters (host arrays), as flax.serialization msgpack."""
  atomic_write(os.path.join(run_dir(workdir, cfg), PARAMS_FILE),
               serialization.msgpack_serialize(params))


def has_params(workdir: str, cfg: Config) -> bool:
  return read_run_file(workdir, run_id(cfg), PARAMS_FILE) is not None


def read_params(workdir: str, cfg: Config) -> dict[str, Any]:
  data = read_run_file(workdir, run_id(cfg), PARAMS_FILE)
  if data is None:
    raise FileNotFoundError(f'{run_dir(workdir, cfg)} has no {PARAMS_FILE}')
  return serialization.msgpack_restore(data)


def write_extra(workdir: str, cfg: Config, values: dict[str, float]) -> None:
  atomic_write(os.path.join(run_dir(workdir, cfg), EXTRA_FILE), json.dumps(values))


def read_extra(workdir: str, cfg: Config) -> dict[str, float] | None:
  """The run's extra metrics; None if it has none (or they cannot be read)."""
  data = read_run_file(workdir, run_id(cfg), EXTRA_FILE)
  try:
    return None if data is None else json.loads(data)
  except ValueError:
    return None


def encode_bits(bits) -> bytes:
  """test_correct.bits: the count (8 bytes, little-endian), then np.packbits(bits)."""
  bits = np.asarray(bits, bool).reshape(-1)
  return struct.pack('<Q', len(bits)) + np.packbits(bits).tobytes()


def decode_bits(data: bytes) -> np.ndarray:
  """The bool array `encode_bits` wrote; ValueError if `data` is not one."""
  if len(data) < 8:
    raise ValueError(f'{len(data)} bytes, too short for the 8-byte count')
  [count] = struct.unpack('<Q', data[:8])
  if len(data) != 8 + -(-count // 8):
    raise ValueError(f'{len(data) - 8} bytes of bits for a count of {count}')
  return np.unpackbits(np.frombuffer(data, np.uint8, offset=8), count=count).astype(bool)


def read_test_correct(workdir: str, cfg_or_run_id: Config | str) -> np.ndarray | None:
  """Per test example (in the data's test order), whether the run's best model on
  validation is right: a bool array whose mean is the row's best_test_acc. None
  for a run without one (diverged, unfinished, or written before it was kept).
  From the run's directory or its packed copy."""
  rid = cfg_or_run_id if isinstance(cfg_or_run_id, str) else run_id(cfg_or_run_id)
  data = read_run_file(workdir, rid, TEST_CORRECT_FILE)
  if data is None:
    return None
  try:
    return decode_bits(data)
  except ValueError as e:
    raise Unreadable(f'{os.path.join(workdir, RUNS_DIR, rid, TEST_CORRECT_FILE)} cannot be '
                     f'read ({e})') from None


# ----------------------------------------------------------------------------
# Packed runs: one file instead of a directory of files per run


def read_run_file(workdir: str, rid: str, name: str) -> bytes | None:
  """The bytes of runs/<rid>/<name>: from the run's directory if it has one, else
  from the packed runs; None if neither holds it."""
  directory = os.path.join(workdir, RUNS_DIR, rid)
  if os.path.isdir(directory):
    try:
      with open(os.path.join(directory, name), 'rb') as f:
        return f.read()
    except FileNotFoundError:
      return None
  return _archive(workdir).get(rid, {}).get(name)


def _archive(workdir: str) -> dict[str, dict[str, bytes]]:
  """run id -> file name -> bytes, of WORKDIR/runs.jsonl.gz ({} without one)."""
  path = os.path.join(workdir, ARCHIVE_FILE)
  try:
    stat = os.stat(path)
  except FileNotFoundError:
    return {}
  return _read_archive(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _read_archive(path: str, mtime_ns: int, size: int) -> dict[str, dict[str, bytes]]:
  """Keyed by the file's time and size too, so a rewritten archive is read again."""
  del mtime_ns, size
  runs = {}
  try:
    with gzip.open(path, 'rt') as f:
      for number, line in enumerate(f, start=1):
        if not line.strip():
          continue
        entry = json.loads(line)
        files = {name: text.encode() for name, text in entry['files'].items()}
        files.update({name: base64.b64decode(text)
                      for name, text in entry.get('binary', {}).items()})
        runs[entry['run_id']] = files
  except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f'{path} cannot be read ({type(e).__name__}: {str(e)[:120]}); it holds '
                     'the packed runs of this workdir: restore it from a copy (git checkout '
                     'for committed results), or move it away to train those runs again.'
                     ) from None
  return runs


def pack(workdir: str) -> int:
  """Moves every finished run directory into WORKDIR/runs.jsonl.gz; returns how many.

  The archive is rewritten whole (atomically, byte-for-byte the same for the
  same runs: sorted, no time stamp), then the packed directories are removed.
  A run directory that has not finished (no final.json), or that holds files
  `pack` does not keep (a sweep's models or event files), is left as it is.
  """
  entries = {rid: files for rid, files in _archive(workdir).items()}
  packed = []
  for rid in _run_dirs(workdir):
    directory = os.path.join(workdir, RUNS_DIR, rid)
    names = set(os.listdir(directory))
    if FINAL_FILE not in names or not names <= set(PACKED_FILES + PACKED_BINARY):
      continue
    files = {}
    for name in PACKED_FILES + PACKED_BINARY:
      path = os.path.join(directory, name)
      if os.path.isfile(path):
        with open(path, 'rb') as f:
          files[name] = f.read()
    entries[rid] = files
    packed.append(directory)
  if not packed:
    return 0
  lines = []
  for rid in sorted(entries):
    files = entries[rid]
    lines.append(json.dumps({
        'run_id': rid,
        'files': {n: files[n].decode() for n in PACKED_FILES if n in files},
        'binary': {n: base64.b64encode(files[n]).decode() for n in PACKED_BINARY if n in files},
    }, sort_keys=True) + '\n')
  buffer = io.BytesIO()
  with gzip.GzipFile(fileobj=buffer, mode='wb', mtime=0, filename='') as f:
    f.write(''.join(lines).encode())
  atomic_write(os.path.join(workdir, ARCHIVE_FILE), buffer.getvalue())
  # Out of the way first (a dotted name is no run directory), then removed: a
  # kill in between leaves no half-removed run for a reader to find.
  for directory in packed:
    os.rename(directory, f'{directory}.packed-{os.getpid()}')
  for name in os.listdir(os.path.join(workdir, RUNS_DIR)):
    if '.packed-' in name:  # this call's, and any an earlier killed pack left
      shutil.rmtree(os.path.join(workdir, RUNS_DIR, name), ignore_errors=True)
  with contextlib.suppress(OSError):  # runs/ itself, once empty
    os.rmdir(os.path.join(workdir, RUNS_DIR))
  return len(packed)
