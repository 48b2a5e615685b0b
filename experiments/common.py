"""What every experiment shares: the budget, tuning, paired statistics, plots, the report.

An experiment module declares `NAME`, `TITLE`, `QUESTION`, `METHOD`, `TRAINS`,
`arms(quick)` (the configurations it compares, as overrides of `base(quick)`)
and `analyse(ctx)` (the report's own sections, written from `ctx`'s verdicts).
`METHOD` says what is particular to the experiment; a training experiment's
report appends `protocol`, the shared budget, tuning and statistics.
Optional: `REFERENCE` (the arm the others are compared with; default the
first), `contrasts(labels)` (the comparisons, default every arm against the
reference on test accuracy), `MARGIN` (the equivalence margin, declared before
running), `HEADLINE` (arm labels whose comparison is also checked at 30 epochs
and on mnist_5k), `extra(dataset)` (more metrics per run, from its final
parameters, computed when the run finishes) and `KEEP_PARAMS` (the seeds whose
final parameters are kept on disk, for analyses that plot them).

The budget (full mode): every arm trains `FULL_EPOCHS` epochs. Its learning
rate is tuned first: every rate of its grid on the tuning seeds (the first
`TUNE_SEEDS` of `FULL_SEEDS`), the rate with the best mean validation
accuracy chosen (never on test); then the other seeds train at the chosen
rate only, and the arm is reported on all of `FULL_SEEDS` at that rate. (A full
grid on every seed would cost twice as much and change only the choice's noise.)
A rate chosen at the edge of the grid extends it: the next rate beyond that
edge (at the grid's own spacing) trains on the tuning seeds and the choice is
made again, up to `MAX_EXTENSIONS` times per side, so the chosen rate is an
interior optimum unless the report flags it.

Each comparison pairs runs of the same seed (same data order and, where
shapes match, the same initialisation): a paired t test on
the per-seed differences, Holm across the experiment's comparisons, and TOST
against the margin; `lenet_jax.stats.compare` has the rules.

Resumable: a run's files under WORKDIR/runs/<id>/ are the record. `run`
trains only the runs that have not finished (unreadable ones are moved aside
and trained again, as sweeps do), stops after the group in progress once
`max_minutes` have passed, and writes report.md only when every run exists
(progress.md until then).

Quick mode (for tests): 2 seeds (the first tunes), 1 epoch on at most 2,048
training examples, 2 rates per grid, at most 3 arms; its report says it
answers nothing.
"""
import dataclasses
import functools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import serialization

from lenet_jax import config as config_lib
from lenet_jax import data as data_lib
from lenet_jax import loop
from lenet_jax import plots
from lenet_jax import report as report_lib
from lenet_jax import stats
from lenet_jax import sweep as sweep_lib
from lenet_jax import validation
from lenet_jax import workdir as workdir_lib
from lenet_jax.config import Config

FULL_SEEDS = tuple(range(10))
TUNE_SEEDS = 3  # the first seeds, which train at every rate of the grid
FULL_EPOCHS = 15
QUICK_SEEDS = (0, 1)
QUICK_TUNE_SEEDS = 1
QUICK_EPOCHS = 1
QUICK_TRAIN_EXAMPLES = 2048
QUICK_ARMS = 3
QUICK_RATES = 2  # the first rates of each grid
# per side of a grid, in full mode (quick mode never extends). Four reach 32x the recipe's
# rate (64e-3 for Adam's 2e-3): two stopped at 8x, the edge still chosen by the
# global-average-pooling heads and by the 2x2 and single-3x3 arms.
MAX_EXTENSIONS = 4
RATE_FACTORS = (0.5, 1.0, 2.0)  # an arm's default grid: its recipe's rate times these
MARGIN = 0.005  # default equivalence margin: half a point of accuracy
ALPHA = 0.05  # family-wise error rate of each experiment's comparisons
CHECK_EPOCHS = 30  # the headline comparisons' longer-training check
CHECK_DATASET = 'mnist_5k'  # ... and their other-data check
LR = 'optim.learning_rate'
# A group of an experiment (up to 30 runs) is saved as one checkpoint: at most
# once a minute, at its end and on SIGINT/SIGTERM (loop.train_group).
CHECKPOINT_EVERY_SECONDS = 60.0
PARAMS_FILE = 'params.msgpack'  # a run's final parameters (KEEP_PARAMS experiments)
EXTRA_FILE = 'extra.json'  # a run's extra metrics (experiments with `extra`)


@dataclasses.dataclass(frozen=True)
class Arm:
  label: str  # how tables and plots name it
  overrides: dict[str, Any]  # config field -> value, over the experiment's base
  rates: tuple[float, ...] | None = None  # its learning-rate grid; None: RATE_FACTORS

  def config(self, base_cfg: Config) -> Config:
    return config_lib.override(base_cfg, self.overrides)

  def grid(self, base_cfg: Config, quick: bool) -> tuple[float, ...]:
    rate = self.config(base_cfg).optim.learning_rate
    grid = self.rates or tuple(float(f'{rate * f:.6g}') for f in RATE_FACTORS)
    if len(set(grid)) != len(grid) or len(grid) < QUICK_RATES:
      raise ValueError(f'arm {self.label!r}: rates={grid} must be at least {QUICK_RATES} '
                       'distinct learning rates.')
    grid = tuple(sorted(grid))
    return grid[:QUICK_RATES] if quick else grid


def _rate(x: float) -> float:
  return float(f'{x:.6g}')


def tuning_grids(arms: Sequence[Arm], base_cfg: Config, quick: bool,
                 rows: Sequence[dict[str, Any]], tune_seeds: Sequence[int]
                 ) -> tuple[dict[str, tuple[float, ...]], dict[str, float]]:
  """Per arm, the rates its tuning seeds train (its grid, extended past an edge
  that won) and, once every one of those runs has finished, the chosen rate.

  The choice is `select_rates`' (best mean validation accuracy over the tuning
  seeds, among rates that finished on all of them). A choice at the highest
  rate adds highest * (highest / second highest); at the lowest, lowest *
  (lowest / second lowest); at most `MAX_EXTENSIONS` times per side (none in
  quick mode). An arm whose rates diverged on every seed has no chosen rate.
  """
  done = {(r['arm'], r[LR], r['seed']): r for r in rows if r['seed'] in tune_seeds}
  grids, chosen = {}, {}
  limit = 0 if quick else MAX_EXTENSIONS
  for arm in arms:
    grid, up, down = arm.grid(base_cfg, quick), 0, 0
    while True:
      runs = [done.get((arm.label, rate, seed)) for rate in grid for seed in tune_seeds]
      if any(r is None for r in runs):
        break  # tuning runs left to train
      pick = select_rates([arm], runs, tune_seeds)[arm.label].chosen
      if pick is None:
        break
      rate = pick[LR]
      if rate == grid[-1] and up < limit:
        grid, up = grid + (_rate(grid[-1] * grid[-1] / grid[-2]),), up + 1
      elif rate == grid[0] and down < limit:
        grid, down = (_rate(grid[0] * grid[0] / grid[1]),) + grid, down + 1
      else:
        chosen[arm.label] = rate
        break
    grids[arm.label] = grid
  return grids, chosen


@dataclasses.dataclass(frozen=True)
class Contrast:
  """`arm`'s `metric` minus `reference`'s `reference_metric` (default the same), per seed."""
  arm: str
  reference: str
  metric: str = 'test_acc'
  reference_metric: str | None = None

  @property
  def label(self) -> str:
    other = self.reference_metric or self.metric
    if other != self.metric:
      return f'{self.arm}: {self.metric} - {other}' if self.arm == self.reference else (
          f'{self.arm} {self.metric} - {self.reference} {other}')
    suffix = '' if self.metric == 'test_acc' else f' ({self.metric})'
    return f'{self.arm} - {self.reference}{suffix}'


@dataclasses.dataclass
class Named(report_lib.Group):
  """A report group labelled by name (an arm, or a comparison) instead of by fields."""
  name: str = ''

  @property
  def label(self) -> str:
    return self.name


@dataclasses.dataclass(frozen=True)
class Outcome:
  contrast: Contrast
  result: report_lib.Result | None  # None: an arm without a selected rate

  @property
  def comparison(self) -> stats.Comparison | None:
    return self.result.comparison if self.result else None


def reference(module, labels: Sequence[str]) -> str:
  return getattr(module, 'REFERENCE', None) or labels[0]


def contrasts_of(module, labels: Sequence[str]) -> list[Contrast]:
  """The module's comparisons among the arms present (quick and check modes run fewer)."""
  if hasattr(module, 'contrasts'):
    every = module.contrasts(labels)
  else:
    ref = reference(module, labels)
    every = [Contrast(label, ref) for label in labels if label != ref]
  return [c for c in every if c.arm in labels and c.reference in labels]


# ----------------------------------------------------------------------------
# Data and evaluation helpers the modules use


def base(quick: bool, **overrides) -> Config:
  """The default recipe (ReLU, Adam 2e-3, cosine, batch 128) for FULL_EPOCHS epochs."""
  cfg = config_lib.override(config_lib.default(),
                            {'epochs': QUICK_EPOCHS if quick else FULL_EPOCHS})
  return config_lib.override(cfg, overrides)


def quick_subset(dataset: data_lib.Dataset) -> data_lib.Dataset:
  n = QUICK_TRAIN_EXAMPLES
  return dataclasses.replace(dataset, train_images=dataset.train_images[:n],
                             train_labels=dataset.train_labels[:n],
                             val_images=dataset.val_images[:1000],
                             val_labels=dataset.val_labels[:1000],
                             test_images=dataset.test_images[:2000],
                             test_labels=dataset.test_labels[:2000])


def shift_images(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """Images moved by (dy, dx) pixels, the uncovered border filled with 0."""
  out = np.zeros_like(images)
  h, w = images.shape[1:3]
  out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = images[
      :, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
  return out


@functools.lru_cache(maxsize=None)
def _eval_functions(model_cfg):
  """One apply function and optimizer per architecture: jit caches on them, so
  building new ones per call would compile (and keep) a program every call."""
  import optax  # pylint: disable=import-outside-toplevel
  from lenet_jax.model import LeNet5  # pylint: disable=import-outside-toplevel
  return LeNet5(model_cfg).apply, optax.identity()


def accuracy(cfg: Config, params, images: np.ndarray, labels: np.ndarray,
             batch_size: int = 1000) -> float:
  """Accuracy of `params` on arbitrary images (e.g. shifted ones)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from lenet_jax import train  # pylint: disable=import-outside-toplevel
  apply_fn, tx = _eval_functions(cfg.model)
  state = train.TrainState.create(apply_fn=apply_fn, params=params, tx=tx)
  if cfg.model.normalization == 'batch':
    raise ValueError('accuracy() needs the batch statistics of a batch-norm model.')
  sums = train.evaluate(state, jnp.asarray(images), jnp.asarray(labels), batch_size=batch_size)
  return int(jax.device_get(sums['correct'])) / len(labels)


# ----------------------------------------------------------------------------
# The plan and its runs


@dataclasses.dataclass(frozen=True)
class Planned:
  arm: str
  config: Config  # seed and learning rate set

  @property
  def run_id(self) -> str:
    return sweep_lib.run_id(self.config)


def make_plan(arms: Sequence[Arm], base_cfg: Config, seeds: Sequence[int],
              tune_seeds: int, dataset: data_lib.Dataset, quick: bool,
              grids: dict[str, tuple[float, ...]] | None = None,
              chosen: dict[str, float] | None = None) -> list[Planned]:
  """The runs known so far, in arm order; each config checked before anything trains.

  Per arm: every rate of its grid (`grids`, default the arm's own) on the
  first `tune_seeds` seeds, and, once `chosen` names its rate, that rate on the
  other seeds.
  """
  chosen, grids = chosen or {}, grids or {}
  plan, owner = [], {}
  for arm in arms:
    cfg = loop.with_input_shape(arm.config(base_cfg), dataset)
    validation.check_config(cfg)
    grid = grids.get(arm.label) or arm.grid(base_cfg, quick)
    runs = [(rate, seed) for rate in grid for seed in seeds[:tune_seeds]]
    if arm.label in chosen:
      runs += [(chosen[arm.label], seed) for seed in seeds[tune_seeds:]]
    for rate, seed in runs:
      run = Planned(arm.label, config_lib.override(cfg, {LR: rate, 'seed': seed}))
      if run.run_id in owner:
        raise ValueError(f'arms {owner[run.run_id]!r} and {arm.label!r} train the same '
                         'configuration; give each arm its own overrides.')
      owner[run.run_id] = arm.label
      plan.append(run)
  return plan


def planned_total(arms: Sequence[Arm], base_cfg: Config, seeds: Sequence[int],
                  tune_seeds: int, quick: bool,
                  grids: dict[str, tuple[float, ...]] | None = None) -> dict[str, int]:
  """Arm label -> how many runs it trains in all (its grid, as extended so far, on
  the tuning seeds, then the other seeds)."""
  grids = grids or {}
  return {arm.label: len(grids.get(arm.label) or arm.grid(base_cfg, quick)) * tune_seeds
          + len(seeds) - tune_seeds for arm in arms}


def _finished(workdir: str, run: Planned, fingerprint: str, keep_params: Sequence[int],
              has_extra: bool, say: Callable[[str], None]) -> dict[str, Any] | None:
  """The run's row if every file the experiment needs from it is there, else None."""
  row = sweep_lib.finished_row(workdir, run.config, warn=say, fingerprint=fingerprint)
  if row is None:
    return None
  directory = sweep_lib.run_dir(workdir, run.config)
  if run.config.seed in keep_params and not os.path.isfile(
      os.path.join(directory, PARAMS_FILE)):
    return None
  if has_extra:
    try:
      with open(os.path.join(directory, EXTRA_FILE)) as f:
        row.update(json.load(f))
    except (OSError, ValueError):
      return None
  row['arm'] = run.arm
  return row


def load_result(workdir: str, cfg: Config) -> loop.RunResult:
  """A finished run with its final parameters, from its files (KEEP_PARAMS experiments)."""
  directory = sweep_lib.run_dir(workdir, cfg)
  with open(os.path.join(directory, PARAMS_FILE), 'rb') as f:
    params = serialization.msgpack_restore(f.read())
  with open(os.path.join(directory, 'final.json')) as f:
    row = json.load(f)
  with open(os.path.join(directory, 'metrics.jsonl')) as f:
    history = [json.loads(line) for line in f if line.strip()]
  return loop.RunResult(cfg, status=row['status'], diverged_epoch=row.get('diverged_epoch'),
                        history=history, params=params)


def _hours(seconds: float) -> str:
  return f'{seconds / 3600:.1f} h' if seconds >= 3600 else f'{seconds / 60:.0f} min'


def train_plan(plan: Sequence[Planned], dataset: data_lib.Dataset, workdir: str,
               keep_params: Sequence[int] = (),
               extra: Callable[[loop.RunResult], dict[str, float]] | None = None,
               max_minutes: float | None = None, group_size: int = len(FULL_SEEDS) * 3,
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
  plan may be only its tuning runs), for the time estimate.
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
  epochs = plan[0].config.epochs if plan else 0
  say(f'{len(plan)} runs ({len(plan) - len(todo)} already finished in {workdir}); '
      f'{epochs} epochs each')
  # Groups of the whole plan, so a group (and its checkpoint) is the same
  # whichever of its runs have finished; only the unfinished ones train.
  unfinished = {run.run_id for run in todo}
  batches = [(whole, [c for c in whole if sweep_lib.run_id(c) in unfinished])
             for whole in sweep_lib.groups([run.config for run in plan], max_models=group_size)]
  batches = [(whole, members) for whole, members in batches if members]
  trained_epochs, trained_seconds, trained_runs = 0, 0.0, 0
  for g, (whole, members) in enumerate(batches, start=1):
    group_start = time.monotonic()
    checkpoints = sweep_lib.group_dir(workdir, whole)
    for res in loop.train_group(members, dataset, checkpoint_dir=checkpoints,
                                run_ids=[sweep_lib.run_id(c) for c in members],
                                checkpoint_every=CHECKPOINT_EVERY_SECONDS, say=say):
      row = sweep_lib.write_run(workdir, res)
      directory = sweep_lib.run_dir(workdir, res.config)
      if res.config.seed in keep_params:
        sweep_lib.atomic_write(os.path.join(directory, PARAMS_FILE),
                               serialization.msgpack_serialize(jax.device_get(res.params)))
      if extra is not None:
        values = extra(res) if res.status == 'ok' else {}
        sweep_lib.atomic_write(os.path.join(directory, EXTRA_FILE), json.dumps(values))
        row.update(values)
      row['arm'] = arm_of[row['run_id']]
      rows[row['run_id']] = row
    sweep_lib.write_results(workdir, ordered())
    shutil.rmtree(checkpoints, ignore_errors=True)  # every run of the group is written
    trained_runs += len(members)
    trained_epochs += len(members) * epochs
    trained_seconds += time.monotonic() - group_start
    per_epoch = trained_seconds / trained_epochs
    everything = max(total or 0, len(plan))
    left = everything - len(rows)
    arm = arm_of[sweep_lib.run_id(members[0])]
    say(f'[{g}/{len(batches)}] {arm}: {len(members)} runs in '
        f'{time.monotonic() - group_start:.0f}s; {len(rows)} of {everything} done')
    if g == 1:
      say(f'estimate: the whole experiment is {everything} runs x {epochs} epochs x '
          f'{per_epoch:.2f} s per run-epoch (measured on {arm}; arms differ) = '
          f'{_hours(everything * epochs * per_epoch)} on this machine')
    say(f'about {_hours(left * epochs * per_epoch)} of training left')
    if max_minutes is not None and time.monotonic() - start >= 60 * max_minutes:
      break
  if rows:
    sweep_lib.write_results(workdir, ordered())
  return ordered(), trained_runs


# ----------------------------------------------------------------------------
# Selection and comparisons


def select_rates(arms: Sequence[Arm], rows: Sequence[dict[str, Any]],
                 tune_seeds: Sequence[int] | None = None) -> dict[str, Named]:
  """Per arm, the learning rate with the best mean validation accuracy over the tuning seeds.

  `report.tune`'s rule: only rates that finished on every tuning seed are
  eligible. Each returned group holds the arm's runs at the chosen rate, on
  every seed (`chosen` is None, and `runs` empty, when no rate is eligible),
  and every rate's tuning runs in `candidates`. `tune_seeds` None: every seed
  tunes.
  """
  tuning = [r for r in rows if tune_seeds is None or r['seed'] in tune_seeds]
  groups = []
  for arm in arms:
    rates = list(dict.fromkeys(r[LR] for r in tuning if r['arm'] == arm.label))
    for rate in rates:
      groups.append(Named({'arm': arm.label, LR: rate},
                          [r for r in tuning if r['arm'] == arm.label and r[LR] == rate],
                          name=arm.label))
  selected = {}
  for g in report_lib.tune(groups, LR, 'val_acc'):
    label = g.values['arm']
    runs = ([r for r in rows if r['arm'] == label and r[LR] == g.chosen[LR]]
            if g.chosen else [])
    selected[label] = Named(g.values, runs, g.chosen, g.candidates, name=label)
  return selected


def _metric_group(group: Named, metric: str, name: str) -> Named:
  """The group's runs with `metric` copied to the key 'value' (to pair two metrics)."""
  runs = [{**r, 'value': r.get(metric)} for r in group.runs]
  return Named(group.values, runs, group.chosen, name=name)


def compare_contrasts(contrasts: Sequence[Contrast], selected: dict[str, Named],
                      margin: float, alpha: float = ALPHA) -> list[Outcome]:
  """Paired tests of every contrast at each arm's selected rate, corrected together."""
  pairings = {}
  for c in contrasts:
    a, b = selected[c.arm], selected[c.reference]
    if a.chosen and b.chosen:
      pairings[c] = report_lib.pair(_metric_group(a, c.metric, c.label),
                                    _metric_group(b, c.reference_metric or c.metric, c.label),
                                    'value')
  testable = [c for c, p in pairings.items() if len(p.seeds) >= 2]
  tests = [stats.paired_t(pairings[c].values, pairings[c].baseline_values) for c in testable]
  comparisons = dict(zip(testable, stats.compare(tests, margin, alpha))) if tests else {}
  return [Outcome(c, report_lib.Result(pairings[c], comparisons.get(c)) if c in pairings
                  else None) for c in contrasts]


def points(x: float) -> str:
  return f'{100 * x:+.2f}'


def reading(outcome: Outcome, margin: float) -> str:
  """The verdict of one comparison, its estimate and interval, in one sentence."""
  c, comp = outcome.contrast, outcome.comparison
  if outcome.result is None:
    return (f'{c.label}: not compared: an arm has no learning rate that finished on every '
            'seed.')
  if comp is None:
    return f'{c.label}: not compared: fewer than 2 seeds finished in both.'
  lo, hi = comp.interval
  return (f'{c.label}: **{comp.verdict}** ({points(comp.test.estimate)} points, Holm '
          f'{100 * comp.level:.4g}% CI {points(lo)} to {points(hi)}, '
          f'{len(outcome.result.pairing.seeds)} paired seeds)')


def plain_words(outcome: Outcome, margin: float) -> str:
  """What the verdict lets one say, for an answer: never more than the test showed."""
  comp = outcome.comparison
  if comp is None:
    return 'not compared'
  m = f'{100 * margin:g} points'
  if comp.verdict == stats.DIFFERENT:
    return 'higher' if comp.test.estimate > 0 else 'lower'
  if comp.verdict.startswith(stats.DIFFERENT):
    return (f"{'higher' if comp.test.estimate > 0 else 'lower'}, but by less than {m}")
  if comp.verdict.startswith('equivalent'):
    return f'equivalent (within {m})'
  return f'neither shown different nor shown equivalent within {m} (inconclusive)'


# ----------------------------------------------------------------------------
# The context `analyse` reads


@dataclasses.dataclass
class Context:
  """Everything `analyse` may use; every number at each arm's selected rate."""
  quick: bool
  workdir: str
  dataset: data_lib.Dataset | None
  arms: list[Arm]
  base_config: Config  # the recipe every arm overrides, with this run's epochs and data
  rows: list[dict[str, Any]]  # every run, every rate, with 'arm'
  selected: dict[str, Named]  # arm label -> its runs at the chosen rate
  outcomes: list[Outcome]  # the experiment's comparisons, Holm-corrected together
  margin: float = MARGIN

  def by_arm(self, key: str) -> dict[str, list[float]]:
    """arm label -> `key` over the finished runs at the arm's selected rate."""
    return {label: [r[key] for r in g.ok() if r.get(key) is not None]
            for label, g in self.selected.items()}

  def config_of(self, label: str) -> Config:
    """The arm's configuration (seed 0, the recipe's rate), with the data's input shape."""
    arm = next(a for a in self.arms if a.label == label)
    cfg = arm.config(self.base_config)
    return loop.with_input_shape(cfg, self.dataset) if self.dataset is not None else cfg

  def rate_of(self, label: str) -> float | None:
    g = self.selected[label]
    return g.chosen[LR] if g.chosen else None

  def result(self, label: str, seed: int) -> loop.RunResult:
    """The selected run of `seed` with its final parameters (seeds in KEEP_PARAMS)."""
    row = next(r for r in self.selected[label].ok() if r['seed'] == seed)
    return load_result(self.workdir, config_lib.override(
        self.config_of(label), {LR: row[LR], 'seed': seed}))

  def outcome(self, arm: str, reference: str | None = None,
              metric: str = 'test_acc') -> Outcome | None:
    for o in self.outcomes:
      c = o.contrast
      if c.arm == arm and c.metric == metric and (reference is None or c.reference == reference):
        return o
    return None

  def line(self, arm: str, reference: str | None = None, metric: str = 'test_acc') -> str:
    o = self.outcome(arm, reference, metric)
    return '- ' + reading(o, self.margin) + '.' if o else ''

  def lines(self, outcomes: Sequence[Outcome] | None = None) -> str:
    chosen = self.outcomes if outcomes is None else outcomes
    return '\n'.join('- ' + reading(o, self.margin) + '.' for o in chosen)

  def words(self, arm: str, reference: str | None = None, metric: str = 'test_acc') -> str:
    o = self.outcome(arm, reference, metric)
    return plain_words(o, self.margin) if o else 'not run in this mode'

  def count(self, verdict_prefix: str, outcomes: Sequence[Outcome] | None = None) -> int:
    chosen = self.outcomes if outcomes is None else outcomes
    return sum(1 for o in chosen if o.comparison and o.comparison.verdict.startswith(
        verdict_prefix))


# ----------------------------------------------------------------------------
# Report text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  return report_lib.markdown_table(header, rows)


def protocol(epochs: int = FULL_EPOCHS, margin: float = MARGIN) -> str:
  """The study's method, after each training module's METHOD.

  `epochs` is what this report's runs trained (a headline check trains
  `CHECK_EPOCHS`), so the method never states a budget its runs did not get.
  """
  return (f'Budget: {epochs} epochs (cosine schedule), seeds '
          f'{FULL_SEEDS[0]}-{FULL_SEEDS[-1]} ({len(FULL_SEEDS)} seeds). Each arm\'s learning '
          f'rate is tuned on seeds {FULL_SEEDS[0]}-{FULL_SEEDS[TUNE_SEEDS - 1]}, which train at '
          'every rate of its grid (by default its recipe\'s rate x '
          f'{", ".join(f"{f:g}" for f in RATE_FACTORS)}; e.g. 1e-3, 2e-3, 4e-3 for Adam at '
          '2e-3); the rate with the best mean validation accuracy over those seeds is chosen '
          '(the test set plays no part in the choice). A choice at the edge of the grid '
          'extends it by the next rate beyond that edge, at the grid\'s spacing, and chooses '
          f'again, up to {MAX_EXTENSIONS} times per side; a choice still at an edge is flagged. '
          f'The other {len(FULL_SEEDS) - TUNE_SEEDS} seeds train at the chosen rate only, '
          f'and the arm is reported on all {len(FULL_SEEDS)} seeds at it. Comparisons are paired by seed (the '
          'same seed gives the same data order and, where shapes match, the same '
          'initialisation): a paired t test on the per-seed differences at each arm\'s '
          'selected rate, Holm-corrected across all comparisons of this experiment at '
          f'family-wise alpha {ALPHA:g}, and an equivalence test (TOST, Holm-corrected the '
          f'same way) against a margin of +-{100 * margin:g} points declared before running. '
          'Throughput is not reported: the runs were timed on a shared machine.')


def arm_table(ctx: Context, extra_columns: Sequence[str] = ()) -> str:
  """Per arm at its selected rate: runs, metrics with 95% CIs, params and FLOPs."""
  groups = [g for g in ctx.selected.values() if g.runs]
  return report_lib.configuration_table(groups, None, ['val_acc', 'test_acc', *extra_columns])


def tuning_section(ctx: Context) -> str:
  groups = list(ctx.selected.values())
  table = report_lib.tuning_table(groups, None, LR, 'val_acc', 'test_acc')
  edges = []
  for arm in ctx.arms:
    g = ctx.selected[arm.label]
    if g.chosen:
      grid = sorted(g.candidates)
      if g.chosen[LR] in (grid[0], grid[-1]):
        side = 'lowest' if g.chosen[LR] == grid[0] else 'highest'
        edges.append(f'{arm.label} (lr {g.chosen[LR]:g}, the {side} of {len(grid)})')
  unselected = [a.label for a in ctx.arms if not ctx.selected[a.label].chosen]
  notes = []
  if edges:
    notes.append('Selected at the edge of the grid, so possibly under-tuned: ' +
                 '; '.join(edges) + '.')
  if unselected:
    notes.append('No rate finished on every seed, so nothing was selected and the arm is '
                 'not compared: ' + ', '.join(unselected) + '.')
  dead = [n for n in (report_lib.near_chance_note(ctx.selected[a.label]) for a in ctx.arms
                      if ctx.selected[a.label].chosen) if n]
  if dead:
    notes.append('At the selected rate: ' + ' '.join(dead))
  seeds = sorted({r['seed'] for g in groups for c in (g.candidates or {}).values()
                  for r in c.runs})
  return (f'Mean validation accuracy over the tuning seeds ({", ".join(map(str, seeds))}) at '
          'each learning rate; the arm is reported at the best one, on every seed.\n\n' + table + ('\n\n' + '\n'.join(notes) if notes else ''))


def comparisons_section(ctx: Context) -> str:
  results = [o.result for o in ctx.outcomes if o.result]
  missing = [o for o in ctx.outcomes if not o.result]
  m = sum(1 for r in results if r.comparison)
  text = (f'Each row: the first minus the second, per seed, at each arm\'s selected rate '
          f'(accuracy as a fraction; {ctx.margin:g} is {100 * ctx.margin:g} points). Holm over '
          f'the {m} comparisons at family-wise alpha {ALPHA:g}, for the difference and, '
          f'separately, for equivalence (TOST) within +-{ctx.margin:g}. "different": the Holm '
          'interval excludes 0; "equivalent within +-m": the Holm (1 - 2 gamma) interval lies '
          'inside +-m; "different, but within +-m": both; "inconclusive": neither, so the '
          'seeds can say neither that the arms differ nor that they are the same.\n\n')
  if results:
    text += report_lib.comparison_table(results)
  text += '\n\n' + '\n'.join('- ' + reading(o, ctx.margin) for o in missing)
  notes = [f'{r.pairing.group.label}: {r.pairing.note}.' for r in results if r.pairing.note]
  return text.rstrip() + ('\n\n' + '\n'.join(f'- {n}' for n in notes) if notes else '')


def _plots(ctx: Context) -> list[str]:
  figures = []
  series = {}
  for label, g in ctx.selected.items():
    if g.chosen:
      curves, _ = report_lib.load_curves(ctx.workdir, g.ok(), 'val_acc')
      if curves:
        series[f'{label} (lr {g.chosen[LR]:g})'] = curves
  if series:
    plots.learning_curves(series, os.path.join(ctx.workdir, 'curves.png'))
    figures.append('![validation accuracy per epoch at each arm\'s selected rate, mean +- 1 '
                   'std over seeds](curves.png)')
  compared = [o for o in ctx.outcomes if o.comparison]
  if compared:
    plots.forest([o.contrast.label for o in compared],
                 [o.comparison.test.estimate for o in compared],
                 [o.comparison.interval for o in compared],
                 [o.comparison.verdict for o in compared], ctx.margin,
                 os.path.join(ctx.workdir, 'forest.png'),
                 'difference (first - second), paired by seed; accuracy as a fraction',
                 'paired differences, Holm-corrected intervals')
    figures.append('![paired differences with Holm intervals and the +-margin '
                   'band](forest.png)')
  return figures


def plot_accuracy(ctx: Context, x_key: str, path: str, xlabel: str, log_x: bool = True) -> str:
  """Test accuracy (mean and 95% CI at the selected rate) against a per-arm quantity.

  Each arm has its own colour and marker, named in a legend beside the axes,
  so no label sits on a point or on another label.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  test = ctx.by_arm('test_acc')
  fig, ax = plt.subplots(figsize=(7.5, 4.2))
  colors = plt.get_cmap('tab10' if len(ctx.arms) <= 10 else 'tab20').colors
  markers = 'osD^v<>ph*'
  for i, arm in enumerate(ctx.arms):
    g = ctx.selected.get(arm.label)
    if not g or not g.ok():
      continue
    s = stats.summarise(test[arm.label])
    x = g.ok()[0][x_key]
    ax.errorbar([x], [s['mean']], yerr=[0 if math.isnan(s['ci95']) else s['ci95']],
                fmt=markers[i % len(markers)], color=colors[i % len(colors)], capsize=3,
                label=arm.label)
  if log_x:
    ax.set_xscale('log')
  ax.set_xlabel(xlabel)
  ax.set_ylabel('test accuracy at the selected rate\n(mean, 95% CI over seeds)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  fig.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(fig)
  return os.path.basename(path)


def tally(ctx: Context, outcomes: Sequence[Outcome]) -> str:
  """How many of `outcomes` came out each way, naming the arms."""
  groups: dict[str, list[str]] = {}
  for o in outcomes:
    groups.setdefault(plain_words(o, ctx.margin), []).append(o.contrast.label)
  if not groups:
    return 'no comparisons were made'
  return '; '.join(f'{words}: {len(labels)} ({", ".join(labels)})'
                   for words, labels in groups.items())


VERDICTS_FILE = 'verdicts.json'  # a finished experiment's verdicts, for the headline checks


def _write_verdicts(ctx: Context) -> None:
  out = {}
  for o in ctx.outcomes:
    if o.comparison:
      out[o.contrast.label] = {'verdict': o.comparison.verdict,
                               'estimate': o.comparison.test.estimate,
                               'interval': list(o.comparison.interval),
                               'seeds': len(o.result.pairing.seeds)}
  sweep_lib.atomic_write(os.path.join(ctx.workdir, VERDICTS_FILE), json.dumps(out, indent=2))


def check_workdirs(workdir: str, name: str, quick: bool) -> dict[str, str]:
  """Where the headline checks of the experiment in `workdir` write: title -> workdir."""
  parent, suffix = os.path.dirname(os.path.abspath(workdir)), '-quick' if quick else ''
  return {f'{CHECK_EPOCHS} epochs': os.path.join(parent, f'{name}-{CHECK_EPOCHS}ep{suffix}'),
          CHECK_DATASET: os.path.join(parent, f'{name}-{CHECK_DATASET}{suffix}')}


def holds(here: stats.Comparison | None, there: dict[str, Any]) -> str:
  """Whether a check's verdict (from its verdicts.json) is the main one: the same
  verdict and, for a difference, the same sign."""
  if here is None or there['verdict'] != here.verdict:
    return 'does not hold'
  if here.verdict.startswith(stats.DIFFERENT) and (
      (there['estimate'] > 0) != (here.test.estimate > 0)):
    return 'does not hold (opposite sign)'
  return 'holds'


def headline_section(module, ctx: Context) -> str | None:
  headline = [o for o in ctx.outcomes if o.contrast.arm in getattr(module, 'HEADLINE', ())
              and o.contrast.metric == 'test_acc']
  if not headline:
    return None
  checks = check_workdirs(ctx.workdir, module.NAME, ctx.quick)
  found = {}
  for title, directory in checks.items():
    try:
      with open(os.path.join(directory, VERDICTS_FILE)) as f:
        found[title] = json.load(f)
    except (OSError, ValueError):
      found[title] = None
  rows = []
  for o in headline:
    here = o.comparison.verdict if o.comparison else 'not compared'
    cells = []
    for title, verdicts in found.items():
      there = (verdicts or {}).get(o.contrast.label)
      if verdicts is None:
        cells.append('not run yet')
      elif there is None:
        cells.append('not compared there')
      else:
        cells.append(f"{holds(o.comparison, there)}: {there['verdict']} "
                     f"({points(there['estimate'])} points)")
    rows.append([o.contrast.label, here, *cells])
  commands = '\n'.join(
      f'python -m experiments {module.NAME} '
      + (f'--epochs={CHECK_EPOCHS}' if title.endswith('epochs') else f'--dataset={CHECK_DATASET}')
      + (' --quick' if ctx.quick else '')
      + f'   # writes {os.path.basename(d)}/' for title, d in checks.items())
  return ('The headline comparisons, checked with longer training and on other data '
          '(the reference and headline arms only, same grid, seeds and margin; Holm over '
          'those comparisons). "holds": the same verdict there.\n\n' +
          markdown_table(['comparison', 'verdict here', *checks], rows) +
          f'\n\n```\n{commands}\n```')


def method_text(module, ctx: Context) -> str:
  parts = [f'**Method.** {module.METHOD}']
  cfg = ctx.base_config
  if module.TRAINS:
    parts.append(protocol(cfg.epochs, ctx.margin))
  if ctx.rows:
    parts.append(
        f'This run: base recipe {cfg.model.activation}, {cfg.optim.optimizer} '
        f'({cfg.optim.schedule}), batch {cfg.batch_size}, {cfg.epochs} epoch(s), init '
        f'{cfg.model.init}; seeds {sorted({r["seed"] for r in ctx.rows})}; margin '
        f'+-{ctx.margin:g}. Data: {ctx.dataset.name} from {ctx.dataset.source}, '
        f'{len(ctx.dataset.train_images):,} training, {len(ctx.dataset.val_images):,} '
        f'validation (selection), {len(ctx.dataset.test_images):,} test (reporting) images. '
        'Per-arm intervals are 95% Student-t intervals of the mean over seeds.')
  return ' '.join(parts)


def stray_runs(workdir: str, plan: Sequence[Planned]) -> list[str]:
  """Run directories in `workdir` that the plan does not contain: e.g. the other
  seeds of a rate that a later grid extension replaced. Never read, never deleted."""
  directory = os.path.join(workdir, 'runs')
  planned = {p.run_id for p in plan}
  return sorted(d for d in (os.listdir(directory) if os.path.isdir(directory) else [])
                if d not in planned and '.' not in d)  # '.unreadable-*' are named elsewhere


def _training_time(rows) -> str:
  """The runs' own training time, which a report regenerated from finished runs would
  otherwise hide behind its invocation's few seconds."""
  timed = [r for r in rows if 'train_seconds' in r and 'compile_seconds' in r]
  seconds = sum(r['train_seconds'] + r['compile_seconds'] for r in timed)
  untimed = (f'; {len(rows) - len(timed)} run(s) recorded no time and are not counted'
             if len(timed) < len(rows) else '')
  return (f'Its {len(rows)} runs trained for {seconds / 60:.1f} minutes in all (the sum of '
          'their compile and training seconds, over however many invocations; runs that '
          f'shared the machine count their slower time{untimed}).')


def _invocation(seconds: float, trained: int, rows: Sequence[dict[str, Any]]) -> str:
  """What this invocation did, so a report regenerated from finished runs does not
  read as if the experiment took its few seconds."""
  where = f'{seconds / 60:.1f} minutes on {os.cpu_count()} CPU core(s)'
  if not rows:
    return f'This invocation took {where}.'
  if not trained:
    return (f'This invocation trained no run: it wrote this report from runs finished '
            f'before, in {where}.')
  return f'This invocation trained {trained} of the {len(rows)} runs, in {where}.'


def write_report(ctx: Context, module, sections: Sequence[tuple[str, str]], command: str,
                 seconds: float, check: bool = False, strays: Sequence[str] = (),
                 trained: int = 0) -> str:
  lines = [f'# {module.TITLE}', '', f'**Question.** {module.QUESTION}', '']
  if ctx.quick:
    lines += [f'> QUICK MODE: {ctx.base_config.epochs} epoch(s) on at most '
              f'{QUICK_TRAIN_EXAMPLES:,} training examples, {len(QUICK_SEEDS)} seeds, '
              f'{QUICK_RATES} learning rates, at most {QUICK_ARMS} arms. These numbers test the pipeline and answer nothing.', '']
  if check:
    lines += ['> HEADLINE CHECK: only the headline arms and their references, at the '
              'settings in the method line below; the main report compares its verdicts.', '']
  lines += [method_text(module, ctx), '']
  if ctx.rows:
    figures = _plots(ctx)
    standard = [('Learning rate per arm (chosen on validation)', tuning_section(ctx)),
                ('Arms at their selected rate', arm_table(ctx)),
                ('Paired comparisons', comparisons_section(ctx))]
    if figures:
      standard.append(('Plots', '\n\n'.join(figures)))
    sections = standard + list(sections)
    headline = None if check else headline_section(module, ctx)
    if headline:
      sections.append(('Headline checks', headline))
    _write_verdicts(ctx)
  for title, body in sections:
    lines += [f'## {title}', '', body.strip(), '']
  lines += ['## Reproduce', '', f'```\n{command}\n```', '',
            _invocation(seconds, trained, ctx.rows) +
            (f' {_training_time(ctx.rows)} Per-run configs and metrics are under `runs/`, one '
             'row per run in `results.csv`.' if ctx.rows else ''), '']
  if strays:
    lines += [f'Not part of this experiment, and not read: {len(strays)} run(s) under `runs/` '
              'outside its plan (for example the other seeds of a rate that a later grid '
              'extension replaced): ' + ', '.join(strays) + '.', '']
  text = '\n'.join(lines)
  with open(os.path.join(ctx.workdir, 'report.md'), 'w') as f:
    f.write(text)
  return text


def write_progress(module, workdir: str, totals: dict[str, int],
                   rows: Sequence[dict[str, Any]], command: str) -> str:
  done = {label: sum(r['arm'] == label for r in rows) for label in totals}
  text = '\n'.join([
      f'# {module.TITLE}: in progress', '',
      f'{sum(done.values())} of {sum(totals.values())} runs have finished. The report is '
      'written when all have; a report.md in this directory, if any, is from an earlier study '
      '(its own method and command say which) and is replaced then.', '',
      markdown_table(['arm', 'finished runs'],
                     [[label, f'{done[label]}/{n}'] for label, n in totals.items()]), '',
      'Continue with the same command:', '', f'```\n{command}\n```', ''])
  with open(os.path.join(workdir, 'progress.md'), 'w') as f:
    f.write(text)
  return text


@dataclasses.dataclass(frozen=True)
class RunStatus:
  """What `run` did: the report's text, or the progress text of a partial run."""
  text: str
  complete: bool
  finished: int
  total: int


def run(module, workdir: str, quick: bool, data_overrides: dict[str, Any] | None = None,
        command: str = '', epochs: int | None = None, check: bool = False,
        max_minutes: float | None = None, say: Callable[[str], None] = print) -> RunStatus:
  """Runs (or resumes) one experiment; writes report.md when every run has finished.

  `check`: only the HEADLINE arms and their references (the headline checks
  at `epochs` or on other data). `max_minutes`: stop after the group in
  progress once that long has passed (progress.md instead of the report).
  """
  start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  base_cfg = module.base(quick) if hasattr(module, 'base') else base(quick)
  if data_overrides:
    base_cfg = config_lib.override(base_cfg, data_overrides)
  if epochs is not None:
    base_cfg = config_lib.override(base_cfg, {'epochs': epochs})
  arms = list(module.arms(quick))
  labels = [a.label for a in arms]
  if check:
    headline = getattr(module, 'HEADLINE', ())
    if not headline:
      raise ValueError(f'{module.NAME} declares no HEADLINE comparisons to check; run it '
                       'without --epochs and --dataset.')
    wanted = {c.arm for c in contrasts_of(module, labels) if c.arm in headline}
    wanted |= {c.reference for c in contrasts_of(module, labels) if c.arm in headline}
    arms = [a for a in arms if a.label in wanted]
  if quick:
    arms = arms[:QUICK_ARMS]
  labels = [a.label for a in arms]
  command = command or (f'python -m experiments {module.NAME}' + (' --quick' if quick else ''))
  margin = getattr(module, 'MARGIN', MARGIN)
  dataset, rows, plan, tuning, trained = None, [], [], None, 0
  if module.TRAINS:
    dataset = data_lib.load(base_cfg.data)
    if quick:
      dataset = quick_subset(dataset)
    seeds = QUICK_SEEDS if quick else FULL_SEEDS
    tune_seeds = QUICK_TUNE_SEEDS if quick else TUNE_SEEDS
    tuning = seeds[:tune_seeds]
    extra = module.extra(dataset) if hasattr(module, 'extra') else None
    grids = {a.label: a.grid(base_cfg, quick) for a in arms}
    group_size = len(seeds) * max(len(g) for g in grids.values())
    chosen: dict[str, float] = {}
    with workdir_lib.sweep_lock(workdir):
      while True:  # tune (extending grids past winning edges), then the other seeds
        plan = make_plan(arms, base_cfg, seeds, tune_seeds, dataset, quick, grids, chosen)
        total = sum(planned_total(arms, base_cfg, seeds, tune_seeds, quick, grids).values())
        left = None if max_minutes is None else max_minutes - (time.perf_counter() - start) / 60
        rows, just_trained = train_plan(plan, dataset, workdir,
                                        getattr(module, 'KEEP_PARAMS', ()), extra, left,
                                        group_size, say, total)
        trained += just_trained
        state = tuning_grids(arms, base_cfg, quick, rows, tuning)
        if state == (grids, chosen) or (max_minutes is not None and
                                        time.perf_counter() - start >= 60 * max_minutes):
          break
        grids, chosen = state
    if len(rows) < len(plan) or state != (grids, chosen):  # runs left, or tuning not done
      totals = planned_total(arms, base_cfg, seeds, tune_seeds, quick, state[0])
      text = write_progress(module, workdir, totals, rows, command)
      say(f'partial: {len(rows)} of {sum(totals.values())} runs; run the same command again '
          f'to continue (progress in {os.path.join(workdir, "progress.md")})')
      return RunStatus(text, False, len(rows), sum(totals.values()))
  selected = select_rates(arms, rows, tuning) if rows else {}
  outcomes = compare_contrasts(contrasts_of(module, labels), selected, margin) if rows else []
  ctx = Context(quick, workdir, dataset, arms, base_cfg, rows, selected, outcomes, margin)
  sections = module.analyse(ctx)
  text = write_report(ctx, module, sections, command, time.perf_counter() - start, check,
                      stray_runs(workdir, plan), trained)
  progress = os.path.join(workdir, 'progress.md')
  if os.path.exists(progress):
    os.remove(progress)
  return RunStatus(text, True, len(rows), len(plan))
