"""Sweeps: the Cartesian product of override values times seeds, run and recorded.

A sweep is data: a base `Config`, an ordered mapping from config field to the
values it takes, and the seeds. `expand` turns it into one Config per run;
`groups` batches runs that one program can train together; `run_sweep`
trains them (or one shard of them), each on the data its own config names,
and writes, under the workdir:

  sweep.json                    the sweep and how its groups train (group mode),
                                so a workdir holds one sweep, trained one way
  .lock, .lock.shard-I-of-N     held while a process trains (see workdir.py)
  groups/<group_id>/             orbax checkpoints of a group of runs trained together
                                (checkpoint.py), while it trains; removed once its
                                runs are written
  runs/<run_id>/config.json     the run's full configuration
  runs/<run_id>/variables.msgpack       the final model ({'params', batch statistics}),
  runs/<run_id>/best_variables.msgpack  and the one of the best validation accuracy
                                (flax.serialization msgpack)
  runs/<run_id>/metrics.jsonl   one JSON line per epoch
  runs/<run_id>/tensorboard/    event files: scalars per epoch and the hyperparameters
  runs/<run_id>/final.json      status, final metrics, data source and split sizes,
                                parameters, FLOPs, seconds; written last, it marks
                                the run finished
  results.jsonl, results.csv    one row per run, rebuilt from the runs' files at the
                                start and after each group
                                (results.shard-I-of-N.* for a shard; `merge` joins them)

A run whose files cannot be read back (or belong to another run) is moved
aside to runs/<run_id>.unreadable-<time> and trained again.
"""
import concurrent.futures
import csv
import dataclasses
import functools
import hashlib
import io
import itertools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from flax import serialization

from lenet_jax import arch
from lenet_jax import config as config_lib
from lenet_jax import data as data_lib
from lenet_jax import loop
from lenet_jax import resources
from lenet_jax import stats
from lenet_jax import summaries
from lenet_jax import validation
from lenet_jax import workdir as workdir_lib
from lenet_jax.workdir import atomic_write
from lenet_jax.config import Config


@dataclasses.dataclass(frozen=True)
class Sweep:
  base: Config
  axes: dict[str, list[Any]]  # config field -> values; the product is swept
  seeds: tuple[int, ...] = (0,)


def _check_distinct(name: str, values: Sequence[Any]) -> None:
  seen = set()
  for v in values:
    key = json.dumps(v, sort_keys=True, default=str)
    if key in seen:
      raise ValueError(f'--{name.split(".")[-1]} ({name}) gives the value {v!r} twice '
                       f'(all values: {list(values)}); each value of a sweep must differ. '
                       'For repeated runs of one configuration use --seeds.')
    seen.add(key)


def expand(sweep: Sweep) -> list[Config]:
  """One Config per (point of the product, seed), seeds varying fastest.

  Each config's input shape and validation size are its dataset's, so a
  run's id (a hash of its config) is known before any data is loaded. A value
  given twice on an axis, or a seed given twice, is an error: it would train
  one run twice and count it as two.
  """
  for name, values in sweep.axes.items():
    _check_distinct(name, values)
  _check_distinct('seeds', sweep.seeds)
  names = list(sweep.axes)
  configs, points = [], {}
  for values in itertools.product(*(sweep.axes[n] for n in names)):
    point = resolve(config_lib.override(sweep.base, dict(zip(names, values))))
    given = ', '.join(f'{n.split(".")[-1]}={v!r}' for n, v in zip(names, values))
    same = points.setdefault(run_id(point), given)
    if same != given:  # e.g. validation_size None and the dataset's default
      raise ValueError(f'the sweep points ({same}) and ({given}) are the same configuration '
                       'once resolved, so one run would be trained and counted twice; '
                       'drop one of the two values.')
    configs.extend(dataclasses.replace(point, seed=s) for s in sweep.seeds)
  return configs


def resolve(cfg: Config) -> Config:
  """`cfg` with the input shape and validation size its dataset implies."""
  return config_lib.override(cfg, {
      'model.input_shape': data_lib.dataset_info(cfg.data.dataset).input_shape,
      'data.validation_size': data_lib.validation_size(cfg.data)})


def shard(configs: Sequence[Config], max_models: int, num_shards: int,
          shard_index: int) -> list[list[Config]]:
  """This shard's groups: groups are dealt round-robin, so shards are disjoint
  and together cover the sweep, whatever order the shards run in."""
  if num_shards < 1:
    raise ValueError(f'--num_shards={num_shards} must be >= 1.')
  if not 0 <= shard_index < num_shards:
    raise ValueError(f'--shard_index={shard_index} must be in 0..{num_shards - 1} '
                     f'(--num_shards={num_shards}).')
  return groups(configs, max_models)[shard_index::num_shards]


run_id = config_lib.run_id


def groups(configs: Sequence[Config], max_models: int) -> list[list[Config]]:
  """Runs of one architecture and recipe, at most `max_models` per program, in sweep order.

  The runs of one architecture are dealt into as few groups as `max_models`
  allows, of sizes that differ by at most one (20 runs at 8: 7, 7, 6), so a
  stacked program padded to the largest (`widths`) wastes at most one slot.
  """
  if isinstance(max_models, bool) or not isinstance(max_models, int) or max_models < 1:
    raise ValueError(f'--max_models={max_models!r} must be a positive integer (the most '
                     'runs trained together in one program).')
  by_key: dict[Config, list[Config]] = {}
  for cfg in configs:
    by_key.setdefault(loop.group_key(cfg), []).append(cfg)
  out = []
  for members in by_key.values():
    count = math.ceil(len(members) / max_models)
    size, extra = divmod(len(members), count)
    start = 0
    for g in range(count):
      end = start + size + (g < extra)
      out.append(members[start:end])
      start = end
  return out


def widths(configs: Sequence[Config], max_models: int) -> dict[Config, int]:
  """group key -> the width of its stacked program: its largest group."""
  out: dict[Config, int] = {}
  for members in groups(configs, max_models):
    key = loop.group_key(members[0])
    out[key] = max(out.get(key, 0), len(members))
  return out


def resolve_max_models(max_models: int | str, configs: Sequence[Config],
                       workdir: str | None, stacked: bool, num_shards: int = 1) -> int:
  """`max_models`, with 'auto' resolved: the group size a workdir's sweep.json
  recorded (so a resumed sweep keeps its groups), else what fits
  (resources.auto_max_models). Shards must agree on their groups, so 'auto'
  that would depend on a device's free memory is refused for them."""
  if max_models != 'auto':
    return max_models
  recorded = {}
  if workdir and os.path.isdir(workdir):
    recorded = (read_sweep_json(workdir) or {}).get('execution', {})
  if recorded.get('max_models'):
    return recorded['max_models']
  fits = resources.auto_max_models(list(configs), stacked)
  if num_shards > 1 and fits != resources.auto_max_models(list(configs), stacked=False):
    raise ValueError(f'--max_models=auto with --num_shards={num_shards}: each shard would '
                     'size its groups from the free memory of its own device, and shards '
                     f'must agree on the groups. Give every shard --max_models=N (here {fits} '
                     'fit).')
  return fits


def group_dir(workdir: str, members: Sequence[Config]) -> str:
  """Where a group of runs (the whole group, finished members included) keeps its
  checkpoints: named by a hash of its run ids."""
  blob = ','.join(run_id(c) for c in members)
  return os.path.join(workdir, 'groups', hashlib.sha256(blob.encode()).hexdigest()[:12])


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
  return os.path.join(workdir, 'runs', run_id(cfg))


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
  directory = run_dir(workdir, cfg)
  path = os.path.join(directory, 'final.json')
  if not os.path.isfile(path):
    return None
  rid = run_id(cfg)

  def parse(name, parse_fn):
    file = os.path.join(directory, name)
    try:
      with open(file) as f:
        return parse_fn(f.read())
    except (OSError, ValueError) as e:
      raise Unreadable(f'{file} cannot be read ({type(e).__name__}: {str(e)[:120]})') from None

  row = parse('final.json', json.loads)
  if not isinstance(row, dict) or row.get('run_id') != rid:
    got = row.get('run_id') if isinstance(row, dict) else None
    raise Unreadable(f'{path} belongs to run {got!r}, not to {rid} (a copied file?)')
  recorded = parse('config.json', json.loads)
  if not isinstance(recorded, dict) or config_lib.identity(recorded) != config_lib.identity(cfg):
    raise Unreadable(f'{os.path.join(directory, "config.json")} is not the config of run {rid}')
  history = parse('metrics.jsonl', lambda t: [json.loads(l) for l in t.splitlines() if l])
  if len(history) != row.get('epochs_run'):
    raise Unreadable(f'{os.path.join(directory, "metrics.jsonl")} holds {len(history)} '
                     f'epochs, but final.json says {row.get("epochs_run")}')
  if fingerprint is not None and row.get('data_fingerprint') != fingerprint:
    raise Unreadable(f'{path} was trained on other data (fingerprint '
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
    aside = f'{directory}.unreadable-{time.strftime("%Y%m%d-%H%M%S")}-{os.getpid()}'
    os.replace(directory, aside)
    warn(f'warning: {e}; moved the run to {aside} and training it again')
    return None


def write_run(workdir: str, res: loop.RunResult, tensorboard: bool = False,
              models: bool = False) -> dict[str, Any]:
  """Writes a finished run's files; final.json last, since it marks the run done.

  `models`: its final and best models too (variables.msgpack,
  best_variables.msgpack), from `res.params` and `res.best`.
  """
  run_dir = os.path.join(workdir, 'runs', run_id(res.config))
  os.makedirs(run_dir, exist_ok=True)
  # Room for the run's files (and its event files): never half of them.
  models = models and res.params is not None
  model_bytes = 2 * 4 * arch.totals(res.config.model)['params'] if models else 0
  workdir_lib.require_space(run_dir, RUN_FILES_BYTES + 1024 * len(res.history) + model_bytes)
  atomic_write(os.path.join(run_dir, 'config.json'),
                json.dumps(config_lib.to_dict(res.config), indent=2))
  atomic_write(os.path.join(run_dir, 'metrics.jsonl'),
                ''.join(json.dumps(h) + '\n' for h in res.history))
  if models:
    for name, model in ((VARIABLES_FILE, {'params': res.params, **res.model_state}),
                        (BEST_VARIABLES_FILE, res.best and {
                            'params': res.best['params'], **res.best['model_state']})):
      if model:
        atomic_write(os.path.join(run_dir, name), serialization.msgpack_serialize(model))
  row = result_row(res)
  if tensorboard:
    summaries.write_run(os.path.join(run_dir, 'tensorboard'), res.history, row)
  atomic_write(os.path.join(run_dir, 'final.json'), json.dumps(row, indent=2))
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


def write_results(workdir: str, rows: list[dict[str, Any]], name: str = 'results') -> None:
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


def _describe(sweep: Sweep) -> dict[str, Any]:
  return json.loads(json.dumps({'base': config_lib.identity(sweep.base),
                                'axes': {k: list(v) for k, v in sweep.axes.items()},
                                'seeds': list(sweep.seeds)}, sort_keys=True, default=str))


def read_sweep_json(workdir: str) -> dict[str, Any] | None:
  """The sweep recorded in `workdir`, None if there is none; ValueError if unreadable."""
  path = os.path.join(workdir, 'sweep.json')
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      recorded = json.load(f)
    if not isinstance(recorded, dict):
      raise ValueError('not a JSON object')
  except (OSError, ValueError) as e:
    raise ValueError(f'{path} cannot be read ({str(e)[:120]}); it records which sweep '
                     f'--workdir={workdir} holds. Restore it from a copy, or use a new '
                     '--workdir (the finished runs stay in runs/).') from None
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


def claim_workdir(workdir: str, sweep: Sweep, how: dict[str, Any]) -> None:
  """Records the sweep and how it trains (`execution`) in `workdir`, refusing a
  workdir that holds another sweep or the same sweep trained another way."""
  check_writable(workdir)
  recorded = read_sweep_json(workdir)
  path = os.path.join(workdir, 'sweep.json')
  if recorded is None:
    atomic_write(path, json.dumps({**_describe(sweep), 'execution': how}, indent=2,
                                  sort_keys=True))
    return
  if {k: v for k, v in recorded.items() if k != 'execution'} != _describe(sweep):
    raise ValueError(f'--workdir={workdir} holds results of a different sweep '
                     f'({sweep_difference(recorded, _describe(sweep))}; see {path}); use a '
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


def merge(sweep: Sweep, workdir: str) -> tuple[list[dict[str, Any]], list[Config], list[str]]:
  """Gathers the finished runs of `sweep` (from any shards) into results.csv.

  Returns (rows in sweep order, configs of the runs that have not finished,
  messages about runs whose files are unreadable: those count as missing).
  results.* are written only when at least one run finished.
  """
  recorded = read_sweep_json(workdir)
  if recorded is not None:
    recorded = {k: v for k, v in recorded.items() if k != 'execution'}
    if recorded != _describe(sweep):
      raise ValueError(
          f'--workdir={workdir} holds another sweep than these flags describe ('
          f'{sweep_difference(recorded, _describe(sweep))}; see '
          f'{os.path.join(workdir, "sweep.json")}): give --merge the flags the shards ran '
          'with.')
  rows, missing, unreadable = [], [], []
  for cfg in expand(sweep):
    try:
      row = read_finished(workdir, cfg)
    except Unreadable as e:
      unreadable.append(str(e))
      row = None
    if row is None:
      missing.append(cfg)
    else:
      rows.append(row)
  seen: dict[str, tuple[str, str]] = {}  # data config -> (fingerprint, run id)
  for row in rows:
    data = json.dumps({k: v for k, v in row.items() if k.startswith('data.')}, sort_keys=True)
    fingerprint, other = seen.setdefault(data, (row.get('data_fingerprint'), row['run_id']))
    if fingerprint != row.get('data_fingerprint'):
      raise ValueError(f'runs {other} and {row["run_id"]} in {workdir} name the same data '
                       f'but trained on different data (fingerprints {fingerprint} and '
                       f'{row.get("data_fingerprint")}): the shards loaded different files. '
                       'Give every shard the same data and rerun the one that differs.')
  if rows:
    write_results(workdir, rows)
  return rows, missing, unreadable


def varying_fields(rows: list[dict[str, Any]]) -> list[str]:
  """Config columns (other than the seed) whose value differs between rows."""
  keys = [k for k in rows[0] if k.startswith(('model.', 'optim.', 'data.')) or k in (
      'batch_size', 'epochs')]
  return [k for k in keys if len({str(r.get(k)) for r in rows}) > 1]


def summary_table(rows: list[dict[str, Any]]) -> str:
  """One line per configuration: mean +- std over seeds of the final metrics."""
  if not rows:
    return '(no runs)'
  fields = varying_fields(rows)
  table: dict[tuple, list[dict[str, Any]]] = {}
  for r in rows:
    table.setdefault(tuple(str(r.get(f)) for f in fields), []).append(r)
  header = [f.split('.')[-1] for f in fields] + [
      'params', 'MFLOPs', 'ok/runs', 'val_acc', 'test_acc', 'img/s']
  lines = [header]
  for key, members in table.items():
    ok = [m for m in members if m['status'] == 'ok']
    lines.append(list(key) + [
        f"{members[0]['params']:,}", f"{members[0]['flops'] / 1e6:.2f}",
        f'{len(ok)}/{len(members)}',
        stats.format_mean_std([m['val_acc'] for m in ok]),
        stats.format_mean_std([m['test_acc'] for m in ok]),
        stats.format_mean_std([m['images_per_s'] for m in ok], 0)])
  widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
  out = ['  '.join(str(c).rjust(w) for c, w in zip(line, widths)) for line in lines]
  out.insert(1, '-' * len(out[0]))
  return '\n'.join(out)


def load_datasets(configs: Sequence[Config],
                  load_data: Callable[[config_lib.DataConfig], data_lib.Dataset] = data_lib.load
                  ) -> dict[config_lib.DataConfig, data_lib.Dataset]:
  """The data of every run, loaded once per distinct DataConfig.

  Two dataset names read from the same IDX files would label rows with data
  they never saw, so that is an error.
  """
  datasets = {}
  for cfg in configs:
    if cfg.data not in datasets:
      datasets[cfg.data] = load_data(cfg.data)
  by_files: dict[str, str] = {}
  for ds in datasets.values():
    if ds.source.startswith('idx:'):
      other = by_files.setdefault(ds.source, ds.name)
      if other != ds.name:
        raise ValueError(f'dataset={other!r} and dataset={ds.name!r} would both read the '
                         f'IDX files in {ds.source[4:]}: those files are one dataset. Put '
                         'each dataset in a subdirectory named after it (DIR/mnist, '
                         'DIR/fashion_mnist) and pass --idx_dir=DIR.')
  return datasets


def results_name(num_shards: int = 1, shard_index: int = 0) -> str:
  """The stem of the results files a process writes: the sweep's, or its shard's."""
  return 'results' if num_shards == 1 else f'results.shard-{shard_index}-of-{num_shards}'


def _results_paths(workdir: str, name: str) -> list[str]:
  return [os.path.join(workdir, f'{name}.{ext}') for ext in ('jsonl', 'csv')]


def _rebuild_results(workdir: str, name: str, rows: list[dict[str, Any]]) -> None:
  """results.* from the runs' own files: never an old or damaged table left standing."""
  if rows:
    write_results(workdir, rows, name)
    return
  for path in _results_paths(workdir, name):
    if os.path.exists(path):
      os.remove(path)


def run_sweep(sweep: Sweep, workdir: str | None,
              load_data: Callable[[config_lib.DataConfig], data_lib.Dataset] = data_lib.load,
              max_models: int | str = 8,
              progress: Callable[[str], None] | None = None,
              target_test_acc: float | None = None,
              num_shards: int = 1, shard_index: int = 0,
              tensorboard: bool = True, vmap: bool | None = None,
              checkpoint_every: float = 60.0) -> list[dict[str, Any]]:
  """Trains every run of `sweep` (or of one shard of it); returns one row per run.

  Each run trains on the data its own config names (`load_data(cfg.data)`),
  and its row records where that data came from and the split sizes.
  With a workdir, the sweep can be interrupted at any moment and re-run with
  the same arguments: finished runs (final.json present and readable) are
  skipped, unfinished ones resume from their last epoch checkpoint, and the
  results files, rebuilt from the runs at the start and after each group,
  hold every finished run once. One process at a time trains a workdir (or a
  shard of it): a second one is refused, naming the first one's pid.
  A shard writes results.shard-I-of-N.{csv,jsonl}; `merge` gathers the shards.
  With `target_test_acc`, a group stops after the first epoch in which all its
  live runs reach that test accuracy (for time-to-accuracy benchmarks).
  `vmap` is passed to `loop.train_group` (None: per backend); the mode it
  resolves to is recorded in sweep.json, and a workdir is never resumed in
  the other mode. `max_models='auto'`: as many runs per program as the
  device's memory holds (resources.auto_max_models), or the group size a
  workdir recorded when it resumes. Groups checkpoint every
  `checkpoint_every` seconds (0: every epoch), at their end and on a signal.
  """
  say = progress or (lambda line: None)
  warn = progress or (lambda line: print(line, file=sys.stderr, flush=True))
  configs = expand(sweep)
  stacked = loop.resolve_vmap(vmap)
  if max_models == 'auto':
    max_models = resolve_max_models(max_models, configs, workdir, stacked, num_shards)
    say(f'--max_models=auto: up to {max_models} runs per program')
  width_of = widths(configs, max_models)
  batches = shard(configs, max_models, num_shards, shard_index)
  mine = [c for members in batches for c in members]
  datasets = load_datasets(mine, load_data)
  for cfg in mine:  # every bad value fails here, before any training
    validation.check_config(loop.with_input_shape(cfg, datasets[cfg.data]))
    loop.check_against_data(cfg, datasets[cfg.data])
  for data_cfg, ds in datasets.items():
    say(f'{ds.name} from {ds.source}: {len(ds.train_images)} train, {len(ds.val_images)} '
        f'validation, {len(ds.test_images)} test examples')
  resources.check_fits([[loop.with_input_shape(c, datasets[c.data]) for c in members]
                        for members in batches], stacked)
  plan = _Plan(batches, width_of, datasets, stacked, checkpoint_every)
  if not workdir:
    return _train(None, plan, {}, say, target_test_acc, tensorboard, 'results')
  name = results_name(num_shards, shard_index)
  check_writable(workdir)
  with workdir_lib.sweep_lock(workdir, num_shards, shard_index):
    claim_workdir(workdir, sweep, execution(stacked, max_models))
    for path in workdir_lib.clean_temporaries(
        [run_dir(workdir, c) for c in mine] + [group_dir(workdir, m) for m in batches]
        + _results_paths(workdir, name) + [os.path.join(workdir, 'sweep.json')]):
      say(f'removed {path}, left by an interrupted process')
    finished = {run_id(c): finished_row(workdir, c, warn, datasets[c.data].fingerprint)
                for c in mine}
    return _train(workdir, plan, finished, say, target_test_acc, tensorboard, name)


@dataclasses.dataclass
class _Plan:
  """What a process trains: its groups, their program widths, data and cadence."""
  batches: list[list[Config]]
  width_of: dict[Config, int]
  datasets: dict[config_lib.DataConfig, data_lib.Dataset]
  stacked: bool
  checkpoint_every: float


def _train(workdir, plan, finished, say, target_test_acc, tensorboard,
           results_name) -> list[dict[str, Any]]:
  """Trains the unfinished runs of `plan`, group by group; see run_sweep."""
  batches = plan.batches
  mine = [c for members in batches for c in members]
  rows: dict[str, dict[str, Any]] = {k: v for k, v in finished.items() if v}
  if rows:
    say(f'{len(rows)} of {len(mine)} runs already finished in {workdir}; skipping them')
  if workdir:
    _rebuild_results(workdir, results_name, [rows[run_id(c)] for c in mine
                                             if run_id(c) in rows])
  todo = [(whole, [c for c in whole if run_id(c) not in rows]) for whole in batches]
  todo = [(whole, members) for whole, members in todo if members]
  done_epochs = 0
  total_epochs = sum(c.epochs for _, members in todo for c in members)
  start = time.perf_counter()
  first = 0
  total = sum(len(m) for _, m in todo)
  for whole, members in todo:
    label = (f'run {first + 1} of {total}' if len(members) == 1 else
             f'runs {first + 1}-{first + len(members)} of {total}')

    def on_epoch(epoch, results, label=label, members=members):
      nonlocal done_epochs
      done_epochs += len(members)
      elapsed = time.perf_counter() - start
      left = elapsed / done_epochs * max(total_epochs - done_epochs, 0)
      live = [r.history[-1] for r in results if r.history and r.history[-1]['epoch'] == epoch + 1]
      if live:
        mean = lambda k: sum(h.get(k, float('nan')) for h in live) / len(live)
        say(f'[{label}] epoch {epoch + 1}/{members[0].epochs}  '
            f'loss {mean("train_loss"):.4f}  acc {mean("train_acc"):.4f}  '
            f'val {mean("val_acc"):.4f}  test {mean("test_acc"):.4f}  '
            f'{mean("images_per_s"):,.0f} img/s per run  '
            f'{elapsed:.0f}s elapsed, ~{left:.0f}s left')
      live = [r.history[-1] for r in results if r.status == 'running']
      return bool(target_test_acc and live and all(
          h.get('test_acc', 0) >= target_test_acc for h in live))

    checkpoints = group_dir(workdir, whole) if workdir else None
    results = loop.train_group(members, plan.datasets[members[0].data], on_epoch,
                               keep_params=bool(workdir), vmap=plan.stacked,
                               checkpoint_dir=checkpoints,
                               run_ids=[run_id(c) for c in members],
                               checkpoint_every=plan.checkpoint_every,
                               width=plan.width_of[loop.group_key(members[0])], say=say)
    for res in results:
      if res.status == 'diverged':
        say(f'[{label}] seed {res.config.seed}: diverged (non-finite loss) in '
            f'epoch {res.diverged_epoch}; the sweep goes on')
    for res, row in zip(results, write_runs(workdir, results, tensorboard) if workdir
                        else map(result_row, results)):
      rows[run_id(res.config)] = row
    if workdir:
      write_results(workdir, [rows[run_id(c)] for c in mine if run_id(c) in rows],
                    results_name)
      shutil.rmtree(checkpoints, ignore_errors=True)  # every run of it is written
    first += len(members)
  return [rows[run_id(c)] for c in mine if run_id(c) in rows]
