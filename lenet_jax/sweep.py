"""Sweeps: the Cartesian product of override values times seeds, run and recorded.

A sweep is data: a base `Config`, an ordered mapping from config field to the
values it takes, and the seeds. `expand` turns it into one Config per run;
`groups` batches runs that one program can train together; `run_sweep`
trains them (or one shard of them), each on the data its own config names,
and records them in the workdir, whose files `runs.py` reads and writes
(the layout is in its docstring); `merge` gathers the runs of shards.
"""
import dataclasses
import itertools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from lenet_jax import config as config_lib
from lenet_jax import data as data_lib
from lenet_jax import loop
from lenet_jax import resources
from lenet_jax import runs
from lenet_jax import stats
from lenet_jax import validation
from lenet_jax import workdir as workdir_lib
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
  run's id (a hash of its config) is known before any data is loaded (and
  `data.load` refuses data of another shape). Every config is validated here
  (`validation.check_config`), the one place a sweep's points are: what
  depends on the data split is checked by `run_sweep` once the data is
  loaded, before any training. A value given twice on an axis, or a seed
  given twice, is an error: it would train one run twice and count it as two.
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
    for seed in sweep.seeds:
      configs.append(dataclasses.replace(point, seed=seed))
      validation.check_config(configs[-1])
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
    recorded = (runs.read_sweep_json(workdir) or {}).get('execution', {})
  if recorded.get('max_models'):
    return recorded['max_models']
  fits = resources.auto_max_models(list(configs), stacked)
  if num_shards > 1 and fits != resources.auto_max_models(list(configs), stacked=False):
    raise ValueError(f'--max_models=auto with --num_shards={num_shards}: each shard would '
                     'size its groups from the free memory of its own device, and shards '
                     f'must agree on the groups. Give every shard --max_models=N (here {fits} '
                     'fit).')
  return fits


def describe(sweep: Sweep) -> dict[str, Any]:
  return json.loads(json.dumps({'base': config_lib.identity(sweep.base),
                                'axes': {k: list(v) for k, v in sweep.axes.items()},
                                'seeds': list(sweep.seeds)}, sort_keys=True, default=str))


def merge(sweep: Sweep, workdir: str) -> tuple[list[dict[str, Any]], list[Config], list[str]]:
  """Gathers the finished runs of `sweep` (from any shards) into results.csv.

  Returns (rows in sweep order, configs of the runs that have not finished,
  messages about runs whose files are unreadable: those count as missing).
  results.* are written only when at least one run finished.
  """
  recorded = runs.read_sweep_json(workdir)
  if recorded is not None:
    recorded = {k: v for k, v in recorded.items() if k != 'execution'}
    if recorded != describe(sweep):
      raise ValueError(
          f'--workdir={workdir} holds another sweep than these flags describe ('
          f'{runs.sweep_difference(recorded, describe(sweep))}; see '
          f'{os.path.join(workdir, "sweep.json")}): give --merge the flags the shards ran '
          'with.')
  rows, missing, unreadable = [], [], []
  for cfg in expand(sweep):
    try:
      row = runs.read_finished(workdir, cfg)
    except runs.Unreadable as e:
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
    runs.write_results(workdir, rows)
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
  for cfg in mine:  # what depends on the split fails here, before any training
    loop.check_against_data(cfg, datasets[cfg.data])
  for data_cfg, ds in datasets.items():
    say(f'{ds.name} from {ds.source}: {len(ds.train_images)} train, {len(ds.val_images)} '
        f'validation, {len(ds.test_images)} test examples')
  resources.check_fits(batches, stacked)
  plan = _Plan(batches, width_of, datasets, stacked, checkpoint_every)
  if not workdir:
    return _train(None, plan, {}, say, target_test_acc, tensorboard, 'results')
  name = runs.results_name(num_shards, shard_index)
  runs.check_writable(workdir)
  with workdir_lib.sweep_lock(workdir, num_shards, shard_index):
    runs.claim_workdir(workdir, describe(sweep), runs.execution(stacked, max_models))
    for path in workdir_lib.clean_temporaries(
        [runs.run_dir(workdir, c) for c in mine] + [runs.group_dir(workdir, m) for m in batches]
        + runs.results_paths(workdir, name) + [runs.sweep_path(workdir)]):
      say(f'removed {path}, left by an interrupted process')
    finished = {run_id(c): runs.finished_row(workdir, c, warn, datasets[c.data].fingerprint)
                for c in mine}
    return _train(workdir, plan, finished, say, target_test_acc, tensorboard, name)


def _several_processes() -> bool:
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_count() > 1


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
    runs.rebuild_results(workdir, results_name, [rows[run_id(c)] for c in mine
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

    # Under jax.distributed (multihost.py) orbax coordinates every save across the
    # processes, which train different groups: there a group is not checkpointed,
    # and an interrupted one trains again from its start (finished runs stay).
    checkpoints = (runs.group_dir(workdir, whole)
                   if workdir and not _several_processes() else None)
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
    for res, row in zip(results, runs.write_runs(workdir, results, tensorboard) if workdir
                        else map(runs.result_row, results)):
      rows[run_id(res.config)] = row
    if workdir:
      runs.write_results(workdir, [rows[run_id(c)] for c in mine if run_id(c) in rows],
                    results_name)
      shutil.rmtree(checkpoints, ignore_errors=True)  # every run of it is written
    first += len(members)
  return [rows[run_id(c)] for c in mine if run_id(c) in rows]
