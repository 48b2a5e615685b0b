"""Training an experiment's plan and resuming it; the files a run leaves behind.

Resumable: a run's files under WORKDIR/runs/<id>/ are the record. `train_plan`
trains only the runs that have not finished (unreadable ones are moved aside
and trained again, as sweeps do) and stops after the group in progress once
`max_minutes` have passed. Besides a sweep's files, a run may keep its final
parameters (`runs.write_params`, for `KEEP_PARAMS` seeds; `load_result` reads
them back) and its extra metrics (`runs.write_extra`); a run missing a file its
experiment needs counts as unfinished. `stray_runs` names run directories
outside the plan, which are never read. The study reports each run's best model on
validation (`reported`, `best_model`): its kept parameters and extra metrics are that
model's.
"""
import dataclasses
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from experiments import protocol
from lenet_jax import data as data_lib
from lenet_jax import loop
from lenet_jax import runs
from lenet_jax import sweep as sweep_lib
from lenet_jax.config import Config, run_id

# A group of an experiment (up to 30 runs) is saved as one checkpoint: at most
# once a minute, at its end and on SIGINT/SIGTERM (loop.train_group).
CHECKPOINT_EVERY_SECONDS = 60.0


def _finished(workdir: str, run: protocol.Planned, fingerprint: str,
              keep_params: Sequence[int], has_extra: bool,
              say: Callable[[str], None]) -> dict[str, Any] | None:
  """The run's row if every file the experiment needs from it is there, else None."""
  row = runs.finished_row(workdir, run.config, warn=say, fingerprint=fingerprint)
  if row is None:
    return None
  if row['status'] == 'ok' and runs.read_test_correct(workdir, run.config) is None:
    return None  # the study compares test accuracy by its per-example correctness
  if run.config.seed in keep_params and not runs.has_params(workdir, run.config):
    return None
  if has_extra:
    values = runs.read_extra(workdir, run.config)
    if values is None:
      return None
    row.update(values)
  row['arm'] = run.arm
  return reported(row)


def reported(row: dict[str, Any]) -> dict[str, Any]:
  """A results row as the study reports it: `val_acc`, `test_acc` (and losses) are those
  of the run's best model on validation (its `best_*` values); the last epoch's are kept
  as `last_*`."""
  row = dict(row)
  for key in ('val_loss', 'val_acc', 'test_loss', 'test_acc'):
    row[f'last_{key}'] = row.get(key)
    row[key] = row.get(f'best_{key}')
  return row


def best_model(res: loop.RunResult) -> loop.RunResult:
  """`res` with its best-on-validation model as its parameters: the model the study
  reports, and the one its extra metrics and kept parameters come from."""
  if res.best is None:
    return res
  return dataclasses.replace(res, params=res.best['params'],
                             model_state=res.best['model_state'])


def correct_loader(workdir: str) -> Callable[[dict[str, Any]], Any]:
  """row -> the run's per-example test correctness (its best model's), None if not kept."""
  return lambda row: runs.read_test_correct(workdir, row['run_id'])


def load_result(workdir: str, cfg: Config) -> loop.RunResult:
  """A finished run with its kept parameters (its best model's), from its files
  (KEEP_PARAMS experiments)."""
  row = runs.read_finished(workdir, cfg)
  if row is None:
    raise ValueError(f'run {run_id(cfg)} has not finished in {workdir}')
  params = runs.read_params(workdir, cfg)
  history = runs.read_history(workdir, row['run_id'])
  return loop.RunResult(cfg, status=row['status'], diverged_epoch=row.get('diverged_epoch'),
                        history=history, params=params)


class Interrupted(KeyboardInterrupt):
  """Ctrl-C or SIGTERM stopped `train_plan`, after the runs that had finished were
  recorded and packed as at a group's end; `rows` are theirs."""

  def __init__(self, rows: list[dict[str, Any]]):
    super().__init__()
    self.rows = rows


def _hours(seconds: float) -> str:
  return f'{seconds / 3600:.1f} h' if seconds >= 3600 else f'{seconds / 60:.0f} min'


def train_plan(plan: Sequence[protocol.Planned], dataset: data_lib.Dataset, workdir: str,
               keep_params: Sequence[int] = (),
               extra: Callable[[loop.RunResult], dict[str, float]] | None = None,
               max_minutes: float | None = None,
               group_size: int = len(protocol.REPORT_SEEDS) + 3 * len(protocol.TUNING_SEEDS),
               say: Callable[[str], None] = print,
               total: int | None = None) -> tuple[list[dict[str, Any]], int]:
  """Trains the runs of `plan` that have not finished; returns the rows of those that
  have, and how many of them this call trained.

  Groups (one architecture and recipe, up to `group_size` runs: an arm's
  seeds at every rate of its grid share one program) train one after another, each run
  checkpointed as one (CHECKPOINT_EVERY_SECONDS, at its end and on SIGINT/SIGTERM),
  so a killed process loses at most a minute. A run
  is written as a sweep writes it (final.json last), then its parameters and
  extra metrics; the group's checkpoints are deleted once all its runs are on disk.
  Final parameters are kept for the seeds in `keep_params` only (a run's are
  about 250 kB; the analyses that need them plot one seed).
  With `max_minutes`, training stops after the group in progress once that many
  minutes have passed. `total`: how many runs the experiment has in all (the
  plan may be only its tuning runs), for the time estimate. Ctrl-C or SIGTERM raises
  `Interrupted` once the runs that finished are recorded and packed.
  """
  start = time.monotonic()
  rows = {}
  todo = []
  for run in plan:
    row = _finished(workdir, run, dataset.fingerprint, keep_params, extra is not None, say)
    if row is None:
      todo.append(run)
    else:
      rows[run.run_id] = row
  arm_of = {run.run_id: run.arm for run in plan}
  order = {run.run_id: i for i, run in enumerate(plan)}
  ordered = lambda: sorted(rows.values(), key=lambda r: order[r['run_id']])
  cfg = plan[0].config if plan else None
  epochs = cfg.epochs if cfg else 0
  say(f'{len(plan)} runs ({len(plan) - len(todo)} already finished in {workdir}); '
      + (f'{epochs} epochs each' if cfg is None or cfg.patience is None else
         f'each until {cfg.patience} epochs without a better validation accuracy, at most '
         f'{epochs}'))
  # Groups of the whole plan, so a group (and its checkpoint) is the same
  # whichever of its runs have finished; only the unfinished ones train.
  unfinished = {run.run_id for run in todo}
  batches = [(whole, [c for c in whole if run_id(c) in unfinished])
             for whole in sweep_lib.groups([run.config for run in plan], max_models=group_size)]
  batches = [(whole, members) for whole, members in batches if members]
  trained_epochs, trained_seconds, trained_runs = 0, 0.0, 0
  try:
    for g, (whole, members) in enumerate(batches, start=1):
      group_start, group_epochs = time.monotonic(), 0
      checkpoints = runs.group_dir(workdir, whole)
      for res in loop.train_group(members, dataset, checkpoint_dir=checkpoints,
                                  run_ids=[run_id(c) for c in members],
                                  checkpoint_every=CHECKPOINT_EVERY_SECONDS, say=say):
        row = runs.write_run(workdir, res)
        group_epochs += len(res.history)
        res = best_model(res)
        if res.config.seed in keep_params:
          runs.write_params(workdir, res.config, jax.device_get(res.params))
        if extra is not None:
          values = extra(res) if res.status == 'ok' else {}
          runs.write_extra(workdir, res.config, values)
          row.update(values)
        row['arm'] = arm_of[row['run_id']]
        rows[row['run_id']] = reported(row)
      runs.write_results(workdir, ordered())
      shutil.rmtree(checkpoints, ignore_errors=True)  # every run of the group is written
      trained_runs += len(members)
      trained_epochs += group_epochs
      trained_seconds += time.monotonic() - group_start
      per_run = trained_seconds / trained_runs  # a plateau rule stops runs at different epochs
      everything = max(total or 0, len(plan))
      left = everything - len(rows)
      arm = arm_of[run_id(members[0])]
      say(f'[{g}/{len(batches)}] {arm}: {len(members)} runs ({group_epochs} epochs) in '
          f'{time.monotonic() - group_start:.0f}s; {len(rows)} of {everything} done')
      if g == 1:
        say(f'estimate: the whole experiment is {everything} runs x {per_run:.0f} s per run '
            f'({trained_epochs / trained_runs:.1f} epochs; measured on {arm}; arms differ) = '
            f'{_hours(everything * per_run)} on this machine')
      say(f'about {_hours(left * per_run)} of training left')
      if max_minutes is not None and time.monotonic() - start >= 60 * max_minutes:
        break
  except KeyboardInterrupt:
    # Runs that finished inside the stopped group are recorded as at a group's end, so
    # the workdir can be committed or read as it is; the group's checkpoint is kept.
    _record(workdir, ordered())
    raise Interrupted(ordered()) from None
  _record(workdir, ordered())
  return ordered(), trained_runs


def _record(workdir: str, rows: list[dict[str, Any]]) -> None:
  if rows:
    runs.write_results(workdir, rows)
  runs.pack(workdir)  # the finished runs' files into one (runs.ARCHIVE_FILE)


def stray_runs(workdir: str, plan: Sequence[protocol.Planned]) -> list[str]:
  """Run directories in `workdir` that the plan does not contain: e.g. the other
  seeds of a rate that a later grid extension replaced. Never read, never deleted."""
  planned = {p.run_id for p in plan}
  return [d for d in runs.run_ids(workdir) if d not in planned]  # not '.unreadable-*' ones
