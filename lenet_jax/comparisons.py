"""A sweep's configurations and their paired comparisons with a baseline.

Rows in (one per finished run, as results.jsonl holds them), groups out: a
configuration is one value of every swept field (`group_rows`), its runs are
its seeds; `tune` picks each configuration's best value of a tuned field on
validation; `pair` matches a configuration's runs with the baseline's by seed,
and `compare_to_baseline` tests the per-seed differences together (paired t,
Holm, TOST: `stats.compare`). Values are compared in one canonical form,
whether they come from a row, sweep.json or a flag (`canonical`). Pure
functions: nothing is read or written.
"""
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from lenet_jax import fields as fields_lib
from lenet_jax import stats

# Row keys that describe a run rather than measure it; never metrics.
RUN_FACTS = ('run_id', 'status', 'diverged_epoch', 'params', 'flops', 'epochs_run',
             'train_seconds', 'compile_seconds', 'seed', 'batch_size', 'eval_batch_size',
             'epochs', 'workdir')


def _plain(value: Any) -> Any:
  """Floats rounded to 12 significant digits, so 0.001 from a flag equals 0.001 from JSON."""
  if isinstance(value, float):
    return float(f'{value:.12g}')
  if isinstance(value, tuple):
    return tuple(_plain(v) for v in value)
  return value


def canonical(key: str, value: Any) -> Any:
  """One comparable form of a field's value, whether from a row, sweep.json or a flag.

  Rows store per-block fields as "6,16" strings and sweep.json as lists; both
  become the tuples the flag parser makes. Floats are rounded (`_plain`).
  """
  if key in fields_lib.FIELDS and fields_lib.is_tuple_field(key):
    if isinstance(value, (list, tuple)):
      value = ','.join(map(str, value))
    [value] = fields_lib.parse_values(key, ['' if value is None else str(value)])
  return _plain(value)


def show(value: Any) -> str:
  """A value as the command line writes it: 6,16 and 0.001."""
  if isinstance(value, tuple):
    return ','.join(show(v) for v in value) or 'none'
  if isinstance(value, float):
    return f'{value:g}'
  return str(value)


def field_key(name: str, swept: Sequence[str], flag: str) -> str:
  """The config key of a flag name ('channels' -> 'model.channels'), which must be swept."""
  names = ', '.join(fields_lib.flag_name(k) for k in swept) or '(none: every run has the same config)'
  key = name if name in fields_lib.FIELDS else next(
      (k for k in fields_lib.FIELDS if fields_lib.flag_name(k) == name), None)
  if key is None:
    raise ValueError(f'{flag}: unknown field {name!r}; the swept fields are: {names}.')
  if key not in swept:
    raise ValueError(f'{flag}: {name} is not swept in this workdir (every run has the same '
                     f'{name}); name a swept field: {names}.')
  return key


def parse_selector(text: str, swept: Sequence[str], flag: str = '--baseline') -> dict[str, Any]:
  """'channels=6,16;learning_rate=0.001' -> {'model.channels': (6, 16), ...}, as run.py parses."""
  out = {}
  for part in text.split(';'):
    if not part.strip():
      continue
    name, sep, value = part.partition('=')
    if not sep:
      raise ValueError(f'{flag}={text!r}: {part.strip()!r} is not NAME=VALUE; write e.g. '
                       f"{flag}='channels=6,16;learning_rate=0.001'.")
    key = field_key(name.strip(), swept, flag)
    if key in out:
      raise ValueError(f'{flag}={text!r} names {name.strip()} twice; a baseline gives each '
                       'field once.')
    try:
      values = fields_lib.parse_values(key, [value.strip()])
    except ValueError as e:
      raise ValueError(f'{flag}={text!r}: {e}') from e
    if len(values) != 1:
      raise ValueError(f'{flag}={text!r} gives {len(values)} values of {name.strip()}; a '
                       'baseline is one configuration, so give one value.')
    out[key] = canonical(key, values[0])
  if not out:
    raise ValueError(f"{flag}={text!r} names no field; write e.g. {flag}='channels=6,16'.")
  return out


@dataclasses.dataclass
class Group:
  """One configuration and its runs (diverged ones included)."""
  values: dict[str, Any]  # swept config key -> canonical value
  runs: list[dict[str, Any]]
  chosen: dict[str, Any] | None = None  # with tuning: the tuned key -> the value picked
  candidates: dict[Any, 'Group'] | None = None  # with tuning: tuned value -> its runs

  @property
  def label(self) -> str:
    return '; '.join(f'{fields_lib.flag_name(k)}={show(v)}' for k, v in self.values.items()) or 'all runs'

  def ok(self) -> list[dict[str, Any]]:
    return [r for r in self.runs if r['status'] == 'ok']

  def matches(self, selector: dict[str, Any]) -> bool:
    return all(self.values.get(k) == v for k, v in selector.items())


def group_rows(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> list[Group]:
  """Rows grouped by their values of `fields`, in order of first appearance."""
  groups: dict[tuple, Group] = {}
  for row in rows:
    values = {k: canonical(k, row.get(k)) for k in fields}
    key = tuple(values.values())
    group = groups.setdefault(key, Group(values, []))
    twin = next((r for r in group.runs if r.get('seed') == row.get('seed')), None)
    if twin is not None:
      raise ValueError(f'configuration {group.label} has two runs with seed {row.get("seed")} '
                       f'({twin["run_id"]} and {row["run_id"]}), so runs cannot be paired by '
                       'seed; report on a workdir that holds one sweep (or on workdirs that '
                       'differ in some field).')
    group.runs.append(row)
  return list(groups.values())


def find_baseline(groups: Sequence[Group], selector: dict[str, Any], text: str) -> Group:
  """The one configuration the selector names."""
  found = [g for g in groups if g.matches(selector)]
  if len(found) == 1:
    return found[0]
  if not found:
    raise ValueError(f'--baseline={text!r} matches no configuration; the configurations '
                     f'are: {", ".join(repr(g.label) for g in groups)}.')
  missing = [k for k in groups[0].values if k not in selector]
  raise ValueError(f'--baseline={text!r} matches {len(found)} configurations '
                   f'({", ".join(repr(g.label) for g in found)}); name '
                   f'{", ".join(fields_lib.flag_name(k) for k in missing)} as well (separated by '
                   f"';'), or tune over it with --tune.")


def higher_is_better(metric: str) -> bool:
  return 'loss' not in metric


def metric_names(rows: Sequence[dict[str, Any]]) -> list[str]:
  """Keys that hold a measured number in the finished rows."""
  ok = [r for r in rows if r.get('status') == 'ok'] or list(rows)
  keys = dict.fromkeys(k for r in ok for k in r)
  return [k for k in keys
          if k not in RUN_FACTS and k not in fields_lib.FIELDS and '.' not in k and all(
              isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
              for r in ok if k in r)]


def check_metric(metric: str, rows: Sequence[dict[str, Any]], flag: str) -> None:
  names = metric_names(rows)
  if metric not in names:
    raise ValueError(f'{flag}={metric!r} is not a metric of these runs; choose one of '
                     f'{", ".join(names)}.')


def mean(values: Sequence[float]) -> float:
  return sum(values) / len(values) if values else math.nan


def check_select_on(select_on: str) -> None:
  if select_on.startswith('test'):
    raise ValueError(f'--select_on={select_on} would select on the test set, which makes '
                     'every test number after it optimistic; select on validation: '
                     '--select_on=val_acc or --select_on=val_loss.')


def tune(groups: Sequence[Group], tuned: str, select_on: str) -> list[Group]:
  """Groups of the other fields; each takes the runs of the tuned value with the best
  mean `select_on` over seeds (`chosen`), or none (`chosen` None) if no value is eligible.

  A value is eligible only if every one of its runs finished: a setting that
  diverges on some seeds is not a good choice, and averaging its survivors
  would flatter it. Ties go to the value first in sweep order.
  """
  check_select_on(select_on)
  better = max if higher_is_better(select_on) else min
  merged: dict[tuple, Group] = {}
  for g in groups:
    values = {k: v for k, v in g.values.items() if k != tuned}
    out = merged.setdefault(tuple(values.values()), Group(values, [], candidates={}))
    out.candidates[g.values[tuned]] = g
  for out in merged.values():
    eligible = {v: mean([r[select_on] for r in g.runs])
                for v, g in out.candidates.items() if g.runs and len(g.ok()) == len(g.runs)}
    if eligible:
      value = better(eligible, key=eligible.get)
      out.chosen = {tuned: value}
      out.runs = out.candidates[value].runs
  return list(merged.values())


def near_chance(run: dict[str, Any]) -> bool:
  """A finished run whose training accuracy ended below twice chance: it learned nothing.

  Such a run is not 'diverged' (its loss is finite, often exactly ln(classes)),
  so it stays in every mean and pair; the reports name it so that a mean pulled
  down by a few dead runs is not read as a smaller effect. Every row a run
  writes has its class count and training accuracy, so neither is guessed.
  """
  return run['status'] == 'ok' and run['train_acc'] < 2 / run['model.num_classes']


def near_chance_note(group: Group) -> str | None:
  """'LABEL: seeds 5, 7 (2 of 10) ended near chance ...', or None if none did."""
  dead = [r for r in group.ok() if near_chance(r)]
  if not dead:
    return None
  seeds = sorted(r['seed'] for r in dead)
  classes = sorted({r['model.num_classes'] for r in dead})
  return (f'{group.label}: {"seed" if len(seeds) == 1 else "seeds"} {_seeds(seeds)} '
          f'({len(seeds)} of {len(group.ok())}) ended near chance (training accuracy below '
          f'2/{"/".join(map(str, classes))}); kept in every mean and pair.')


@dataclasses.dataclass(frozen=True)
class Pairing:
  """A configuration's runs matched by seed with the baseline's, on one metric."""
  group: Group
  seeds: list[int]
  values: list[float]
  baseline_values: list[float]
  note: str  # how the pairs were made, when not all seeds of both


def pair(group: Group, baseline: Group, metric: str) -> Pairing:
  """Runs of the same seed that both finished with a finite metric."""
  def finished(g):
    return {r['seed']: float(r[metric]) for r in g.ok()
            if r.get(metric) is not None and math.isfinite(float(r[metric]))}
  mine, theirs = finished(group), finished(baseline)
  seeds = sorted(set(mine) & set(theirs))
  all_seeds = {r['seed'] for r in group.runs} | {r['seed'] for r in baseline.runs}
  reasons = []
  for g, name in ((group, 'this configuration'), (baseline, 'the baseline')):
    ran = {r['seed'] for r in g.runs}
    done = finished(g)
    absent = sorted(all_seeds - ran)
    failed = sorted(ran - set(done))
    if absent:
      reasons.append(f'seed(s) {_seeds(absent)} not run in {name}')
    if failed:
      reasons.append(f'seed(s) {_seeds(failed)} without a finite {metric} in {name}')
  note = (f'paired on {len(seeds)} common seed(s) of {len(all_seeds)}: ' + '; '.join(reasons)
          if reasons else '')
  return Pairing(group, seeds, [mine[s] for s in seeds], [theirs[s] for s in seeds], note)


def _seeds(seeds: Sequence[int]) -> str:
  return ', '.join(map(str, seeds))


@dataclasses.dataclass(frozen=True)
class Result:
  pairing: Pairing
  comparison: stats.Comparison | None  # None: fewer than 2 pairs


def compare_to_baseline(groups: Sequence[Group], baseline: Group, metric: str, margin: float,
                        alpha: float) -> list[Result]:
  """Every other configuration against the baseline; Holm over those with 2+ pairs."""
  pairings = [pair(g, baseline, metric) for g in groups if g is not baseline]
  testable = [p for p in pairings if len(p.seeds) >= 2]
  comparisons = stats.compare([stats.paired_t(p.values, p.baseline_values) for p in testable],
                              margin, alpha) if testable else []
  by_id = {id(p): c for p, c in zip(testable, comparisons)}
  return [Result(p, by_id.get(id(p))) for p in pairings]
