"""What every experiment shares: arms over seeds, statistics, plots and the report.

An experiment module declares its `NAME`, `QUESTION`, a function `arms(quick)`
returning the configurations it compares (as overrides of `base(quick)`), and
`analyse(ctx)` returning the report's sections. `run(module, workdir, quick)`
trains every arm over the seeds, writes each run as a sweep does, and writes
`report.md` and the plots to the workdir.

Full mode: 5 seeds, `FULL_EPOCHS` epochs of the full training set, the test
set and the 5,000-example validation split. Quick mode (for tests, about a
minute): 2 seeds, 1 epoch on the first 2,048 training examples, at most 3
arms; its numbers say nothing about the question and the report says so.
"""
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import serialization

from lenet_jax import config as config_lib
from lenet_jax import data as data_lib
from lenet_jax import loop
from lenet_jax import stats
from lenet_jax import sweep as sweep_lib
from lenet_jax import validation
from lenet_jax.config import Config

FULL_SEEDS = (0, 1, 2, 3, 4)
QUICK_SEEDS = (0, 1)
FULL_EPOCHS = 5
QUICK_TRAIN_EXAMPLES = 2048
QUICK_ARMS = 3


@dataclasses.dataclass(frozen=True)
class Arm:
  label: str  # how tables and plots name it
  overrides: dict[str, Any]  # config field -> value, over the experiment's base


@dataclasses.dataclass
class Context:
  """Everything `analyse` may use."""
  quick: bool
  workdir: str
  dataset: data_lib.Dataset
  arms: list[Arm]
  rows: list[dict[str, Any]]  # one per run, with 'arm' and any extra metrics
  results: list[loop.RunResult]  # with final params

  def by_arm(self, key: str) -> dict[str, list[float]]:
    """arm label -> the values of `key` over the seeds whose runs finished."""
    out = {arm.label: [] for arm in self.arms}
    for row in self.rows:
      if row['status'] == 'ok' and row.get(key) is not None:
        out[row['arm']].append(row[key])
    return out

  def first_row(self, label: str) -> dict[str, Any]:
    return next(r for r in self.rows if r['arm'] == label)

  def results_of(self, label: str) -> list[loop.RunResult]:
    ids = {r['run_id'] for r in self.rows if r['arm'] == label}
    return [res for res in self.results if sweep_lib.run_id(res.config) in ids]


def base(quick: bool, **overrides) -> Config:
  """The default recipe (ReLU, Adam, cosine) for FULL_EPOCHS epochs."""
  cfg = config_lib.override(config_lib.default(), {'epochs': 1 if quick else FULL_EPOCHS})
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
  """Test accuracy of `params` on arbitrary images (e.g. shifted ones)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from lenet_jax import train  # pylint: disable=import-outside-toplevel
  apply_fn, tx = _eval_functions(cfg.model)
  state = train.TrainState.create(apply_fn=apply_fn, params=params, tx=tx)
  if cfg.model.normalization == 'batch':
    raise ValueError('accuracy() needs the batch statistics of a batch-norm model.')
  sums = train.evaluate(state, jnp.asarray(images), jnp.asarray(labels), batch_size=batch_size)
  return int(jax.device_get(sums['correct'])) / len(labels)


PARAMS_FILE = 'params.msgpack'  # a run's final parameters, beside its sweep files


def _save_params(workdir: str, res: loop.RunResult) -> None:
  sweep_lib.atomic_write(os.path.join(sweep_lib.run_dir(workdir, res.config), PARAMS_FILE),
                         serialization.msgpack_serialize(jax.device_get(res.params)))


def _load_result(workdir: str, cfg: Config, row: dict[str, Any]) -> loop.RunResult | None:
  """A finished run rebuilt from its files (params included), or None if any is missing."""
  directory = sweep_lib.run_dir(workdir, cfg)
  try:
    with open(os.path.join(directory, PARAMS_FILE), 'rb') as f:
      params = serialization.msgpack_restore(f.read())
    with open(os.path.join(directory, 'metrics.jsonl')) as f:
      history = [json.loads(line) for line in f]
  except (OSError, ValueError):
    return None
  return loop.RunResult(cfg, status=row['status'], diverged_epoch=row.get('diverged_epoch'),
                        history=history, params=params)


def run_arms(arms: Sequence[Arm], base_cfg: Config, seeds: Sequence[int],
             dataset: data_lib.Dataset, workdir: str,
             extra: Callable[[loop.RunResult], dict[str, float]] | None = None,
             progress: Callable[[str], None] = print):
  """Trains every arm over the seeds; returns (rows, results), rows carrying 'arm'.

  Runs already in the workdir's results.jsonl (an earlier, interrupted
  invocation of the same experiment) are taken from there, with their saved
  final parameters, not trained again; a run whose files are incomplete is
  trained again. Both lists come back in arm, then seed, order.
  """
  labelled = []  # (run_id, arm label, config) in arm, then seed, order
  for arm in arms:
    cfg = loop.with_input_shape(config_lib.override(base_cfg, arm.overrides), dataset)
    for s in seeds:
      seeded = dataclasses.replace(cfg, seed=s)
      labelled.append((sweep_lib.run_id(seeded), arm.label, seeded))
  order = {run_id: i for i, (run_id, _, _) in enumerate(labelled)}
  label_of = {run_id: label for run_id, label, _ in labelled}
  rows, results = [], []
  done = {}
  previous = os.path.join(workdir, 'results.jsonl')
  if os.path.isfile(previous):
    with open(previous) as f:
      done = {row['run_id']: row for row in map(json.loads, f)}
  todo = []
  for run_id, label, cfg in labelled:
    row = done.get(run_id)
    res = _load_result(workdir, cfg, row) if row and row.get('arm') == label else None
    if res is None:
      todo.append(cfg)
    else:
      rows.append(row)
      results.append(res)
  if rows:
    progress(f'{len(rows)} runs already in {previous}; training the other {len(todo)}')
  batches = sweep_lib.groups(todo, max_models=len(seeds))
  start = time.perf_counter()
  for g, members in enumerate(batches, start=1):
    group_results = loop.train_group(members, dataset)
    for res in group_results:
      row = sweep_lib.write_run(workdir, res)
      _save_params(workdir, res)
      row['arm'] = label_of[row['run_id']]
      if extra and res.status == 'ok':
        row.update(extra(res))
      rows.append(row)
      results.append(res)
    sweep_lib.write_results(workdir, rows)
    finished = [r for r in rows if r["arm"] == row["arm"] and r["status"] == "ok"]
    progress(f'[{g}/{len(batches)}] {row["arm"]}: test acc '
             f"{stats.format_mean_std([r['test_acc'] for r in finished])} "
             f'({time.perf_counter() - start:.0f}s)')
  rows.sort(key=lambda r: order[r['run_id']])
  results.sort(key=lambda r: order[sweep_lib.run_id(r.config)])
  sweep_lib.write_results(workdir, rows)
  return rows, results


# ----------------------------------------------------------------------------
# Statistics and report text


def ci_cell(values: Sequence[float], digits: int = 4) -> str:
  """'mean +- std [lo, hi]' with the 95% t-interval of the mean."""
  s = stats.summarise(values)
  if s['n'] == 0:
    return '-'
  if s['n'] == 1:
    return f"{s['mean']:.{digits}f} (1 seed)"
  return (f"{s['mean']:.{digits}f} +- {s['std']:.{digits}f} "
          f"[{s['mean'] - s['ci95']:.{digits}f}, {s['mean'] + s['ci95']:.{digits}f}]")


def difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
  """mean(a) - mean(b) with a Welch 95% interval."""
  sa, sb = stats.summarise(a), stats.summarise(b)
  if sa['n'] < 2 or sb['n'] < 2:
    return {'diff': sa['mean'] - sb['mean'], 'lo': math.nan, 'hi': math.nan}
  va, vb = sa['std'] ** 2 / sa['n'], sb['std'] ** 2 / sb['n']
  se = math.sqrt(va + vb)
  if se == 0:
    return {'diff': sa['mean'] - sb['mean'], 'lo': sa['mean'] - sb['mean'],
            'hi': sa['mean'] - sb['mean']}
  df = (va + vb) ** 2 / (va ** 2 / (sa['n'] - 1) + vb ** 2 / (sb['n'] - 1))
  half = stats.t95(max(1, int(df))) * se
  d = sa['mean'] - sb['mean']
  return {'diff': d, 'lo': d - half, 'hi': d + half}


def verdict(name_a: str, a: Sequence[float], name_b: str, b: Sequence[float],
            what: str = 'test accuracy', scale: float = 100, unit: str = ' points') -> str:
  """A sentence comparing two arms that says when the evidence cannot separate them."""
  d = difference(a, b)
  if math.isnan(d['lo']):
    return f'{name_a} vs {name_b}: too few seeds to compare.'
  span = f"{d['diff'] * scale:+.2f}{unit} (95% CI {d['lo'] * scale:+.2f} to {d['hi'] * scale:+.2f})"
  if d['lo'] > 0:
    return f'{name_a} has higher {what} than {name_b}: {span}.'
  if d['hi'] < 0:
    return f'{name_a} has lower {what} than {name_b}: {span}.'
  return f'no detectable difference in {what} between {name_a} and {name_b}: {span}.'


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ['| ' + ' | '.join(map(str, header)) + ' |',
           '|' + '|'.join('---' for _ in header) + '|']
  lines += ['| ' + ' | '.join(map(str, r)) + ' |' for r in rows]
  return '\n'.join(lines)


def arm_table(ctx: Context, extra_columns: Sequence[tuple[str, str]] = ()) -> str:
  """Per arm: parameters, FLOPs, img/s, validation and test accuracy with 95% CIs."""
  val, test, rate = ctx.by_arm('val_acc'), ctx.by_arm('test_acc'), ctx.by_arm('images_per_s')
  extras = [(title, ctx.by_arm(key)) for title, key in extra_columns]
  rows = []
  for arm in ctx.arms:
    first = ctx.first_row(arm.label)
    n_ok = len(test[arm.label])
    n_all = sum(1 for r in ctx.rows if r['arm'] == arm.label)
    rows.append([arm.label, f"{first['params']:,}", f"{first['flops'] / 1e6:.2f}",
                 f"{stats.summarise(rate[arm.label])['mean']:,.0f}", f'{n_ok}/{n_all}',
                 ci_cell(val[arm.label]), ci_cell(test[arm.label])] +
                [ci_cell(values[arm.label]) for _, values in extras])
  header = ['arm', 'params', 'MFLOPs/img', 'img/s', 'ok/runs',
            'val acc (mean +- std [95% CI])', 'test acc (mean +- std [95% CI])']
  return markdown_table(header + [title for title, _ in extra_columns], rows)


def plot_accuracy(ctx: Context, x_key: str, path: str, xlabel: str, log_x: bool = True) -> str:
  """Test accuracy (mean and 95% CI) against a per-arm quantity such as params."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  test = ctx.by_arm('test_acc')
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for arm in ctx.arms:
    s = stats.summarise(test[arm.label])
    x = ctx.first_row(arm.label)[x_key]
    ax.errorbar([x], [s['mean']], yerr=[0 if math.isnan(s['ci95']) else s['ci95']],
                fmt='o', capsize=3)
    ax.annotate(arm.label, (x, s['mean']), textcoords='offset points', xytext=(4, 4),
                fontsize=7)
  if log_x:
    ax.set_xscale('log')
  ax.set_xlabel(xlabel)
  ax.set_ylabel('test accuracy (mean, 95% CI)')
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return os.path.basename(path)


def write_report(ctx: Context, module, sections: Sequence[tuple[str, str]], command: str,
                 seconds: float) -> str:
  lines = [f'# {module.TITLE}', '', f'**Question.** {module.QUESTION}', '']
  if ctx.quick:
    lines += ['> QUICK MODE: 1 epoch on 2,048 training examples, 2 seeds, at most '
              f'{QUICK_ARMS} arms. These numbers test the pipeline and answer nothing.', '']
  base_cfg = ctx.results[0].config if ctx.results else None
  method = [f'**Method.** {module.METHOD}']
  if base_cfg:
    method.append(
        f'Base recipe: {base_cfg.model.activation}, {base_cfg.optim.optimizer} lr '
        f'{base_cfg.optim.learning_rate} ({base_cfg.optim.schedule}), batch '
        f'{base_cfg.batch_size}, {base_cfg.epochs} epoch(s), init {base_cfg.model.init}; '
        f'seeds {sorted({r["seed"] for r in ctx.rows})}. Data: {ctx.dataset.name} from '
        f'{ctx.dataset.source}, {len(ctx.dataset.train_images):,} training, '
        f'{len(ctx.dataset.val_images):,} validation (selection), '
        f'{len(ctx.dataset.test_images):,} test (reporting) images. Intervals are 95% '
        'Student-t intervals of the mean over seeds; differences use Welch intervals.')
  lines += [' '.join(method), '']
  for title, body in sections:
    lines += [f'## {title}', '', body.strip(), '']
  lines += ['## Reproduce', '', f'```\n{command}\n```', '',
            f'Ran in {seconds / 60:.1f} minutes on {os.cpu_count()} CPU core(s).' +
            (' Per-run configs and metrics are under `runs/`, one row per run in '
             '`results.csv`.' if ctx.rows else ''), '']
  text = '\n'.join(lines)
  with open(os.path.join(ctx.workdir, 'report.md'), 'w') as f:
    f.write(text)
  return text


def run(module, workdir: str, quick: bool, data_overrides: dict[str, Any] | None = None,
        command: str = '') -> str:
  """Runs one experiment module end to end; returns the report's text."""
  start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  base_cfg = module.base(quick) if hasattr(module, 'base') else base(quick)
  if data_overrides:
    base_cfg = config_lib.override(base_cfg, data_overrides)
  arms = list(module.arms(quick))
  if quick:
    arms = arms[:QUICK_ARMS]
  dataset = data_lib.load(base_cfg.data) if module.TRAINS else None
  rows, results = [], []
  if module.TRAINS:
    if quick:
      dataset = quick_subset(dataset)
    for arm in arms:  # every arm is checked before anything trains
      cfg = loop.with_input_shape(config_lib.override(base_cfg, arm.overrides), dataset)
      validation.check_config(cfg)
    extra = module.extra(dataset) if hasattr(module, 'extra') else None
    rows, results = run_arms(arms, base_cfg, QUICK_SEEDS if quick else FULL_SEEDS,
                             dataset, workdir, extra)
  ctx = Context(quick, workdir, dataset, arms, rows, results)
  sections = module.analyse(ctx)
  command = command or (f'python -m experiments {module.NAME}' + (' --quick' if quick else ''))
  return write_report(ctx, module, sections, command, time.perf_counter() - start)
