"""Sweeps: the Cartesian product of override values times seeds, run and recorded.

A sweep is data: a base `Config`, an ordered mapping from config field to the
values it takes, and the seeds. `expand` turns it into one Config per run;
`groups` batches runs that one vmapped program can train together;
`run_sweep` trains them (or one shard of them) and writes, under the workdir:

  sweep.json                    the sweep, so a workdir holds one sweep only
  runs/<run_id>/config.json     the run's full configuration
  runs/<run_id>/checkpoints/    orbax checkpoints of the last epochs, to resume from
  runs/<run_id>/metrics.jsonl   one JSON line per epoch
  runs/<run_id>/tensorboard/    event files: scalars per epoch and the hyperparameters
  runs/<run_id>/final.json      status, final metrics, parameters, FLOPs, seconds;
                                written last, it marks the run finished
  results.jsonl, results.csv    one row per run, rewritten atomically after each group
                                (results.shard-I-of-N.* for a shard; `merge` joins them)
"""
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from lenet_jax import arch
from lenet_jax import config as config_lib
from lenet_jax import data as data_lib
from lenet_jax import loop
from lenet_jax import stats
from lenet_jax import summaries
from lenet_jax.config import Config


@dataclasses.dataclass(frozen=True)
class Sweep:
  base: Config
  axes: dict[str, list[Any]]  # config field -> values; the product is swept
  seeds: tuple[int, ...] = (0,)


def expand(sweep: Sweep) -> list[Config]:
  """One Config per (point of the product, seed), seeds varying fastest.

  Each config's input shape is its dataset's, so a run's id (a hash of its
  config) is known before any data is loaded.
  """
  names = list(sweep.axes)
  configs = []
  for values in itertools.product(*(sweep.axes[n] for n in names)):
    point = config_lib.override(sweep.base, dict(zip(names, values)))
    shape = data_lib.dataset_info(point.data.dataset).input_shape
    point = config_lib.override(point, {'model.input_shape': shape})
    configs.extend(dataclasses.replace(point, seed=s) for s in sweep.seeds)
  return configs


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


def run_id(cfg: Config) -> str:
  """A stable name from a hash of the full configuration."""
  blob = json.dumps(config_lib.to_dict(cfg), sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:12]


def groups(configs: Sequence[Config], max_models: int) -> list[list[Config]]:
  """Runs of one architecture and recipe, at most `max_models` per program, in sweep order."""
  by_key: dict[Config, list[Config]] = {}
  for cfg in configs:
    by_key.setdefault(loop.group_key(cfg), []).append(cfg)
  out = []
  for members in by_key.values():
    out.extend(members[i:i + max_models] for i in range(0, len(members), max_models))
  return out


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
  rates = [h['images_per_s'] for h in res.history[1:]] or [h['images_per_s'] for h in res.history]
  row['images_per_s'] = sorted(rates)[len(rates) // 2] if rates else None
  row['train_seconds'] = res.train_seconds
  row['compile_seconds'] = res.compile_seconds
  row.update(_flat(config_lib.to_dict(res.config)))
  return row


def atomic_write(path: str, data: str | bytes) -> None:
  """Writes `data` to `path` so that readers see the old file or the whole new one."""
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'wb' if isinstance(data, bytes) else 'w') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def run_dir(workdir: str, cfg: Config) -> str:
  return os.path.join(workdir, 'runs', run_id(cfg))


def finished_row(workdir: str, cfg: Config) -> dict[str, Any] | None:
  """The results row of a run that already finished in `workdir`, else None."""
  path = os.path.join(run_dir(workdir, cfg), 'final.json')
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_run(workdir: str, res: loop.RunResult, tensorboard: bool = False) -> dict[str, Any]:
  """Writes a finished run's files; final.json last, since it marks the run done."""
  run_dir = os.path.join(workdir, 'runs', run_id(res.config))
  os.makedirs(run_dir, exist_ok=True)
  atomic_write(os.path.join(run_dir, 'config.json'),
                json.dumps(config_lib.to_dict(res.config), indent=2))
  atomic_write(os.path.join(run_dir, 'metrics.jsonl'),
                ''.join(json.dumps(h) + '\n' for h in res.history))
  row = result_row(res)
  if tensorboard:
    summaries.write_run(os.path.join(run_dir, 'tensorboard'), res.history, row)
  atomic_write(os.path.join(run_dir, 'final.json'), json.dumps(row, indent=2))
  return row


def write_results(workdir: str, rows: list[dict[str, Any]], name: str = 'results') -> None:
  atomic_write(os.path.join(workdir, f'{name}.jsonl'),
                ''.join(json.dumps(r) + '\n' for r in rows))
  columns = list(dict.fromkeys(k for r in rows for k in r))
  buf = io.StringIO()
  writer = csv.DictWriter(buf, columns)
  writer.writeheader()
  writer.writerows(rows)
  atomic_write(os.path.join(workdir, f'{name}.csv'), buf.getvalue())


def claim_workdir(workdir: str, sweep: Sweep) -> None:
  """Records the sweep in `workdir`, refusing a workdir that holds another sweep."""
  probe = os.path.join(workdir, f'.write-test-{os.getpid()}')
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, 'w') as f:
      f.write('')
    os.remove(probe)
  except OSError as e:
    raise ValueError(f'--workdir={workdir} is not writable ({e.strerror}); choose '
                     'another directory.') from e
  described = json.dumps({'base': config_lib.to_dict(sweep.base),
                          'axes': {k: list(v) for k, v in sweep.axes.items()},
                          'seeds': list(sweep.seeds)}, indent=2, sort_keys=True, default=str)
  path = os.path.join(workdir, 'sweep.json')
  if os.path.isfile(path):
    with open(path) as f:
      if json.loads(f.read()) != json.loads(described):
        raise ValueError(f'--workdir={workdir} holds results of a different sweep '
                         f'(see {path}); use a new --workdir for this one, or the '
                         'same flags as before to resume that sweep.')
    return
  atomic_write(path, described)


def merge(sweep: Sweep, workdir: str) -> tuple[list[dict[str, Any]], list[Config]]:
  """Gathers the finished runs of `sweep` (from any shards) into results.csv.

  Returns (rows in sweep order, configs of the runs that have not finished).
  """
  rows, missing = [], []
  for cfg in expand(sweep):
    row = finished_row(workdir, cfg)
    if row is None:
      missing.append(cfg)
    else:
      rows.append(row)
  if rows:
    write_results(workdir, rows)
  return rows, missing


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


def run_sweep(sweep: Sweep, workdir: str | None, dataset,
              max_models: int = 8,
              progress: Callable[[str], None] | None = None,
              target_test_acc: float | None = None,
              num_shards: int = 1, shard_index: int = 0,
              tensorboard: bool = True, vmap: bool | None = None) -> list[dict[str, Any]]:
  """Trains every run of `sweep` (or of one shard of it); returns one row per run.

  With a workdir, the sweep can be interrupted at any moment and re-run with
  the same arguments: finished runs (final.json present) are skipped,
  unfinished ones resume from their last epoch checkpoint, and the results
  files, rewritten atomically after each group, hold every finished run once.
  A shard writes results.shard-I-of-N.{csv,jsonl}; `merge` gathers the shards.
  With `target_test_acc`, a group stops after the first epoch in which all its
  live runs reach that test accuracy (for time-to-accuracy benchmarks).
  `vmap` is passed to `loop.train_group` (None: per backend).
  """
  configs = expand(sweep)
  for cfg in configs:  # every bad value fails here, before any training
    config_lib.validate(loop.with_input_shape(cfg, dataset))
  batches = shard(configs, max_models, num_shards, shard_index)
  if workdir:
    claim_workdir(workdir, sweep)
  mine = [c for members in batches for c in members]
  finished = {run_id(c): finished_row(workdir, c) for c in mine} if workdir else {}
  todo = [[c for c in members if not finished.get(run_id(c))] for members in batches]
  todo = [members for members in todo if members]
  skipped = sum(1 for row in finished.values() if row)
  if progress and skipped:
    progress(f'{skipped} of {len(mine)} runs already finished in {workdir}; skipping them')
  rows: dict[str, dict[str, Any]] = {k: v for k, v in finished.items() if v}
  results_name = 'results' if num_shards == 1 else f'results.shard-{shard_index}-of-{num_shards}'
  done_epochs, total_epochs = 0, sum(c.epochs for members in todo for c in members)
  start = time.perf_counter()
  first = 0
  total = sum(len(m) for m in todo)
  for members in todo:
    label = (f'run {first + 1} of {total}' if len(members) == 1 else
             f'runs {first + 1}-{first + len(members)} of {total}')

    def on_epoch(epoch, results, label=label, members=members):
      nonlocal done_epochs
      done_epochs += len(members)
      elapsed = time.perf_counter() - start
      left = elapsed / done_epochs * max(total_epochs - done_epochs, 0)
      if progress:
        live = [r.history[-1] for r in results if r.history and r.history[-1]['epoch'] == epoch + 1]
        if live:
          mean = lambda k: sum(h.get(k, float('nan')) for h in live) / len(live)
          progress(f'[{label}] epoch {epoch + 1}/{members[0].epochs}  '
                   f'loss {mean("train_loss"):.4f}  acc {mean("train_acc"):.4f}  '
                   f'val {mean("val_acc"):.4f}  test {mean("test_acc"):.4f}  '
                   f'{mean("images_per_s"):,.0f} img/s per run  '
                   f'{elapsed:.0f}s elapsed, ~{left:.0f}s left')
      live = [r.history[-1] for r in results if r.status == 'running']
      return bool(target_test_acc and live and all(
          h.get('test_acc', 0) >= target_test_acc for h in live))

    checkpoint_dirs = ([os.path.join(run_dir(workdir, c), 'checkpoints') for c in members]
                       if workdir else None)
    results = loop.train_group(members, dataset, on_epoch, keep_params=False,
                               vmap=vmap, checkpoint_dirs=checkpoint_dirs)
    for res in results:
      if res.status == 'diverged' and progress:
        progress(f'[{label}] seed {res.config.seed}: diverged (non-finite loss) in '
                 f'epoch {res.diverged_epoch}; the sweep goes on')
      rows[run_id(res.config)] = (write_run(workdir, res, tensorboard) if workdir
                                  else result_row(res))
    if workdir:
      write_results(workdir, [rows[run_id(c)] for c in mine if run_id(c) in rows],
                    results_name)
    first += len(members)
  return [rows[run_id(c)] for c in mine if run_id(c) in rows]
