"""What the runs say: each arm's learning rate chosen on validation (its grid
extended past a winning edge), the paired comparisons and their verdicts, their
wording, the `Context` an experiment's `analyse` reads, and the verdicts file
the checks and the answers table read.

Each comparison pairs runs of the same seed (same data order and, where
shapes match, the same initialisation): test accuracy by a paired bootstrap over
seeds and test images (`lenet_jax.bootstrap`, from each run's per-example
correctness), other metrics by a paired t test on the per-seed differences;
Holm within each family, and TOST against the margin; `lenet_jax.stats.compare`
has the rules.
"""
import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from experiments import protocol
from experiments import training
from lenet_jax import config as config_lib
from lenet_jax import data as data_lib
from lenet_jax import loop
from lenet_jax import report as report_lib
from lenet_jax import bootstrap
from lenet_jax import stats
from lenet_jax.workdir import atomic_write
from lenet_jax.config import Config


@dataclasses.dataclass
class Named(report_lib.Group):
  """A report group labelled by name (an arm, or a comparison) instead of by fields."""
  name: str = ''

  @property
  def label(self) -> str:
    return self.name


def _rate(x: float) -> float:
  return float(f'{x:.6g}')


def tuning_grids(arms: Sequence[protocol.Arm], base_cfg: Config, quick: bool,
                 rows: Sequence[dict[str, Any]], tune_seeds: Sequence[int]
                 ) -> tuple[dict[str, tuple[float, ...]], dict[str, float]]:
  """Per arm, the rates its tuning seeds train (its grid, extended past an edge
  that won) and, once every one of those runs has finished, the chosen rate.

  The choice is `select_rates`' (best mean validation accuracy over the tuning
  seeds, among rates that finished on all of them). A choice at the highest
  rate adds highest * (highest / second highest); at the lowest, lowest *
  (lowest / second lowest); at most `protocol.MAX_EXTENSIONS` times per side
  (none in quick mode). An arm whose rates diverged on every seed has no chosen rate.
  """
  done = {(r['arm'], r[protocol.LR], r['seed']): r for r in rows if r['seed'] in tune_seeds}
  grids, chosen = {}, {}
  limit = 0 if quick else protocol.MAX_EXTENSIONS
  for arm in arms:
    grid, up, down = arm.grid(base_cfg, quick), 0, 0
    while True:
      runs = [done.get((arm.label, rate, seed)) for rate in grid for seed in tune_seeds]
      if any(r is None for r in runs):
        break  # tuning runs left to train
      pick = select_rates([arm], runs, tune_seeds)[arm.label].chosen
      if pick is None:
        break
      rate = pick[protocol.LR]
      if rate == grid[-1] and up < limit:
        grid, up = grid + (_rate(grid[-1] * grid[-1] / grid[-2]),), up + 1
      elif rate == grid[0] and down < limit:
        grid, down = (_rate(grid[0] * grid[0] / grid[1]),) + grid, down + 1
      else:
        chosen[arm.label] = rate
        break
    grids[arm.label] = grid
  return grids, chosen


def select_rates(arms: Sequence[protocol.Arm], rows: Sequence[dict[str, Any]],
                 tune_seeds: Sequence[int] | None = None) -> dict[str, Named]:
  """Per arm, the learning rate with the best mean validation accuracy over the tuning seeds.

  `report.tune`'s rule: only rates that finished on every tuning seed are
  eligible. Each returned group holds the arm's runs at the chosen rate on the
  other seeds, the reported ones (`chosen` is None, and `runs` empty, when no
  rate is eligible), and every rate's tuning runs in `candidates`. `tune_seeds`
  None: every seed tunes, and every seed is reported.
  """
  tuning = [r for r in rows if tune_seeds is None or r['seed'] in tune_seeds]
  groups = []
  for arm in arms:
    rates = list(dict.fromkeys(r[protocol.LR] for r in tuning if r['arm'] == arm.label))
    for rate in rates:
      groups.append(Named({'arm': arm.label, protocol.LR: rate},
                          [r for r in tuning
                           if r['arm'] == arm.label and r[protocol.LR] == rate],
                          name=arm.label))
  selected = {}
  for g in report_lib.tune(groups, protocol.LR, 'val_acc'):
    label = g.values['arm']
    runs = ([r for r in rows if r['arm'] == label and r[protocol.LR] == g.chosen[protocol.LR]
             and (tune_seeds is None or r['seed'] not in tune_seeds)] if g.chosen else [])
    selected[label] = Named(g.values, runs, g.chosen, g.candidates, name=label)
  return selected


def _metric_group(group: Named, metric: str, name: str) -> Named:
  """The group's runs with `metric` copied to the key 'value' (to pair two metrics)."""
  runs = [{**r, 'value': r.get(metric)} for r in group.runs]
  return Named(group.values, runs, group.chosen, name=name)


@dataclasses.dataclass(frozen=True)
class Outcome:
  contrast: protocol.Contrast
  result: report_lib.Result | None  # None: an arm without a selected rate
  family: protocol.Family | None = None
  at_levels: bool = False  # tested at levels given beforehand (a check), not by Holm here
  # a check's contrast that the experiment never compared: tested alone at alpha
  uncorrected: bool = False

  @property
  def comparison(self) -> stats.Comparison | None:
    return self.result.comparison if self.result else None


def _without_equivalence(comparison: stats.Comparison) -> stats.Comparison:
  """A comparison whose data cannot resolve the margin: difference verdicts only, and no
  equivalence figures (those `compare` computed against a placeholder margin)."""
  different = comparison.verdict.startswith(stats.DIFFERENT)
  return dataclasses.replace(comparison, verdict=stats.DIFFERENT if different
                             else stats.INCONCLUSIVE, p_equivalent=math.nan,
                             p_equivalent_holm=math.nan, equivalence_level=math.nan,
                             equivalence_interval=(math.nan, math.nan))


def _test(contrast: protocol.Contrast, pairing, a: Named, b: Named, correct):
  """The paired test of one contrast. Test accuracy, when every paired run kept its
  per-example correctness: a bootstrap over seeds and test images, its p-values and
  intervals never less cautious than the paired t test's over seeds
  (`bootstrap.NoNarrowerThan`). Otherwise the paired t test."""
  t = stats.paired_t(pairing.values, pairing.baseline_values)
  if contrast.metric == (contrast.reference_metric or contrast.metric) == 'test_acc':
    if correct is not None:
      ours = {r['seed']: r for r in a.ok()}
      theirs = {r['seed']: r for r in b.ok()}
      bits_a = [correct(ours[s]) for s in pairing.seeds]
      bits_b = [correct(theirs[s]) for s in pairing.seeds]
      if all(x is not None for x in bits_a + bits_b):
        return bootstrap.NoNarrowerThan(
            bootstrap.paired_bootstrap(np.stack(bits_a), np.stack(bits_b)), t)
  return t


def _family_tests(family: protocol.Family, selected: dict[str, Named], correct):
  """Each contrast's pairing (both arms have a selected rate) and test (2+ paired seeds)."""
  pairings, tests = {}, {}
  for c in family.contrasts:
    a, b = selected[c.arm], selected[c.reference]
    if a.chosen and b.chosen:
      pairing = report_lib.pair(_metric_group(a, c.metric, c.label),
                                _metric_group(b, c.reference_metric or c.metric, c.label),
                                'value')
      pairings[c] = pairing
      if len(pairing.seeds) >= 2:
        tests[c] = _test(c, pairing, a, b, correct)
  return pairings, tests


def _outcomes(family: protocol.Family, pairings, compared: dict, margin: float | None,
              given: frozenset[str] | None = None) -> list[Outcome]:
  """`given`: in a check, the labels the experiment gave levels to (None: not a check)."""
  # The margin is in points of accuracy: a metric on another scale (a cosine) gets
  # difference verdicts only (its equivalence p-values still count in the family's
  # Holm, which only makes the others' more cautious).
  compared = {c: x if margin is not None and c.on_accuracy_scale else _without_equivalence(x)
              for c, x in compared.items()}
  return [Outcome(c, report_lib.Result(pairings[c], compared.get(c)) if c in pairings
                  else None, family, given is not None and c.label in given,
                  given is not None and c.label not in given) for c in family.contrasts]


def compare_families(families: Sequence[protocol.Family], selected: dict[str, Named],
                     margin: float | None, alpha: float = protocol.ALPHA,
                     correct: Callable[[dict[str, Any]], np.ndarray | None] | None = None,
                     levels: dict[str, dict[str, float]] | None = None) -> list[Outcome]:
  """Paired tests of every contrast at each arm's selected rate, Holm-corrected family by
  family. `correct(row)`: a run's per-example test correctness (None if not kept).
  `margin` None: no equivalence verdicts (the data cannot resolve one).

  `levels` (a check, `main_levels`): each contrast instead at the levels the experiment's
  own analysis gave it, {label: {'level', 'equivalence_level'}}, so that a check's verdict
  differs from the experiment's only through its data, not through a smaller family; a
  contrast missing there is tested alone at `alpha`.
  """
  out = []
  for family in families:
    pairings, tests = _family_tests(family, selected, correct)
    testable = list(tests)
    if not testable:
      compared = []
    elif levels is None:
      compared = stats.compare([tests[c] for c in testable], margin or 1.0, alpha)
    else:
      given = [levels.get(c.label, {}) for c in testable]
      compared = stats.compare_at(
          [tests[c] for c in testable], [1 - g.get('level', 1 - alpha) for g in given],
          [_equivalence_gamma(g, alpha) for g in given], margin or 1.0, alpha)
    # Only a contrast tested at the experiment's level says so; one missing there was
    # tested alone at alpha, and its report says it is uncorrected.
    out += _outcomes(family, pairings, dict(zip(testable, compared)), margin,
                     None if levels is None else frozenset(levels))
  return out


def _equivalence_gamma(given: dict[str, float], alpha: float) -> float:
  level = given.get('equivalence_level')
  # nan: the experiment made no equivalence test of it (a metric on another scale); the
  # check will not make one either (`_without_equivalence`), so any valid level will do.
  return alpha if level is None or math.isnan(level) else (1 - level) / 2


def registered_verdicts(outcomes: Sequence[Outcome], margin: float | None,
                        alpha: float = protocol.ALPHA) -> dict[str, str]:
  """A check's verdicts as its comparisons were first registered: Holm among the check's
  own contrasts, family by family (a lighter correction than the experiment's, which is
  why checks are now held to the experiment's levels; see `compare_families`)."""
  out = {}
  for family in dict.fromkeys(o.family for o in outcomes):
    tested = [o for o in outcomes if o.family == family and o.comparison]
    compared = (stats.compare([o.comparison.test for o in tested], margin or 1.0, alpha)
                if tested else [])
    for o, x in zip(tested, compared):
      ok = margin is not None and o.contrast.on_accuracy_scale
      out[o.contrast.label] = (x if ok else _without_equivalence(x)).verdict
  return out


def compare_contrasts(contrasts: Sequence[protocol.Contrast], selected: dict[str, Named],
                      margin: float, alpha: float = protocol.ALPHA) -> list[Outcome]:
  """Paired t tests of `contrasts` as one family (no per-example data)."""
  family = protocol.Family('', '', '', tuple(contrasts))
  return [dataclasses.replace(o, family=None)
          for o in compare_families([family], selected, margin, alpha)]


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
  kind = ("the experiment's" if outcome.at_levels else
          'uncorrected (the experiment did not compare it)' if outcome.uncorrected else 'Holm')
  return (f'{c.label}: **{comp.verdict}** ({points(comp.test.estimate)} points, {kind} '
          f'{100 * comp.level:.4g}% CI {points(lo)} to {points(hi)}, '
          f'{len(outcome.result.pairing.seeds)} paired seeds)')


def plain_words(outcome: Outcome, margin: float) -> str:
  """What the verdict lets one say, for an answer: never more than the test showed."""
  comp = outcome.comparison
  if comp is None:
    return 'not compared'
  if margin is None:  # no equivalence test on these data
    if comp.verdict == stats.DIFFERENT:
      return 'higher' if comp.test.estimate > 0 else 'lower'
    return 'not shown different (equivalence not assessed on these data)'
  m = f'{100 * margin:g} points'
  if comp.verdict == stats.DIFFERENT:
    return 'higher' if comp.test.estimate > 0 else 'lower'
  if comp.verdict.startswith(stats.DIFFERENT):
    return (f"{'higher' if comp.test.estimate > 0 else 'lower'}, but by less than {m}")
  if comp.verdict.startswith('equivalent'):
    return f'equivalent (within {m})'
  return f'neither shown different nor shown equivalent within {m} (inconclusive)'


def category(verdict: str) -> str:
  """A verdict without its margin (which differs between datasets): 'different',
  'different, but within the margin', 'equivalent' or 'inconclusive'."""
  if verdict.startswith(f'{stats.DIFFERENT}, but'):
    return f'{stats.DIFFERENT}, but within the margin'
  if verdict.startswith('equivalent'):
    return 'equivalent'
  return verdict


def agrees(main: dict[str, Any], there: dict[str, Any], margin_there: float | None) -> bool | None:
  """Whether a check's verdict is the main one's: the same category (margins aside) and,
  for a difference, the same sign. None where the check cannot say: the main verdict
  needs an equivalence test the check's data cannot make (no margin there)."""
  needs_margin = category(main['verdict']) != stats.DIFFERENT and category(
      main['verdict']) != stats.INCONCLUSIVE
  if margin_there is None and needs_margin:
    return None
  if category(there['verdict']) != category(main['verdict']):
    return False
  return not main['verdict'].startswith(stats.DIFFERENT) or (
      (there['estimate'] > 0) == (main['estimate'] > 0))


def holds(here: stats.Comparison | None, there: dict[str, Any],
          margin_there: float | None = protocol.MARGIN) -> str:
  """Whether a check's verdict (from its verdicts.json) is the main one (`agrees`)."""
  if here is None:
    return 'does not hold'
  ok = agrees({'verdict': here.verdict, 'estimate': here.test.estimate}, there, margin_there)
  if ok is None:
    return 'not assessable there (no equivalence margin)'
  if ok:
    return 'holds'
  if category(there['verdict']) == category(here.verdict):
    return 'does not hold (opposite sign)'
  return 'does not hold'


@dataclasses.dataclass
class Context:
  """Everything `analyse` may use; every number at each arm's selected rate."""
  quick: bool
  workdir: str
  dataset: data_lib.Dataset | None
  arms: list[protocol.Arm]
  base_config: Config  # the recipe every arm overrides, with this run's epochs and data
  rows: list[dict[str, Any]]  # every run, every rate, with 'arm'
  selected: dict[str, Named]  # arm label -> its runs at the chosen rate
  outcomes: list[Outcome]  # the experiment's comparisons, Holm-corrected family by family
  margin: float | None = protocol.MARGIN  # None: no equivalence verdicts on these data
  families: list[protocol.Family] = dataclasses.field(default_factory=list)
  registration: dict[str, Any] | None = None  # the pre-registration the runs started under

  def margin_words(self) -> str:
    return (f'margin +-{100 * self.margin:.3g} points' if self.margin
            else 'no equivalence margin on these data')

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
    return g.chosen[protocol.LR] if g.chosen else None

  def result(self, label: str, seed: int) -> loop.RunResult:
    """The selected run of `seed` with its final parameters (seeds in KEEP_PARAMS)."""
    row = next((r for r in self.selected[label].ok() if r['seed'] == seed), None)
    if row is None:
      raise ValueError(f'{label}: seed {seed} did not finish at the selected rate, so its '
                       'parameters cannot be shown.')
    return training.load_result(self.workdir, config_lib.override(
        self.config_of(label), {protocol.LR: row[protocol.LR], 'seed': seed}))

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


def tally(ctx: Context, outcomes: Sequence[Outcome]) -> str:
  """How many of `outcomes` came out each way, naming the arms."""
  groups: dict[str, list[str]] = {}
  for o in outcomes:
    groups.setdefault(plain_words(o, ctx.margin), []).append(o.contrast.label)
  if not groups:
    return 'no comparisons were made'
  return '; '.join(f'{words}: {len(labels)} ({", ".join(labels)})'
                   for words, labels in groups.items())


VERDICTS_FILE = 'verdicts.json'  # a finished experiment's verdicts, for checks and answers


def write_verdicts(ctx: Context) -> None:
  out = {}
  registered = (registered_verdicts(ctx.outcomes, ctx.margin)
                if any(o.at_levels for o in ctx.outcomes) else {})
  for o in ctx.outcomes:
    if o.comparison:
      out[o.contrast.label] = {'verdict': o.comparison.verdict,
                               'estimate': o.comparison.test.estimate,
                               'interval': list(o.comparison.interval),
                               'level': o.comparison.level,
                               'equivalence_level': o.comparison.equivalence_level,
                               'test': type(o.comparison.test).__name__,
                               'family': o.family.question if o.family else None,
                               'seeds': len(o.result.pairing.seeds),
                               'runs': paired_run_ids(o, ctx.selected)}
      if o.contrast.label in registered:  # a check: its verdict as first registered
        out[o.contrast.label]['verdict_as_registered'] = registered[o.contrast.label]
  cfg = ctx.base_config
  atomic_write(os.path.join(ctx.workdir, VERDICTS_FILE), json.dumps({
      'margin': ctx.margin, 'dataset': cfg.data.dataset, 'patience': cfg.patience,
      'max_epochs': cfg.epochs, 'quick': ctx.quick,
      'registration': (ctx.registration or {}).get('sha256'), 'comparisons': out}, indent=2))


def paired_run_ids(outcome: Outcome, selected: dict[str, Named]) -> list[list[str]]:
  """[arm's run id, reference's run id] per paired seed of `outcome`."""
  c = outcome.contrast
  ours = {r['seed']: r['run_id'] for r in selected[c.arm].ok()}
  theirs = {r['seed']: r['run_id'] for r in selected[c.reference].ok()}
  return [[ours[s], theirs[s]] for s in outcome.result.pairing.seeds]


def read_verdicts(workdir: str) -> dict[str, Any] | None:
  """A finished experiment's verdicts ({'margin', 'comparisons': {label: ...}}), or None."""
  try:
    with open(os.path.join(workdir, VERDICTS_FILE)) as f:
      found = json.load(f)
  except (OSError, ValueError):
    return None
  return found if 'comparisons' in found else None  # older files: not this protocol's


def main_levels(check_workdir: str, name: str, quick: bool) -> dict[str, dict[str, float]]:
  """The levels the experiment's own analysis gave each comparison, from its verdicts.json
  next to the check's workdir (`check_workdirs`); ValueError naming the fix if it has none."""
  main = os.path.join(os.path.dirname(os.path.abspath(check_workdir)),
                      name + ('-quick' if quick else ''))
  command = f'python -m experiments {name}' + (' --quick' if quick else '')
  found = read_verdicts(main)
  if found is None:
    raise ValueError(
        f'a check of {name} tests each primary comparison at the level {name}\'s own analysis '
        f'gave it, read from {os.path.join(main, VERDICTS_FILE)}, which does not exist yet; '
        f'finish the experiment first (`{command}`), in the directory next to the check\'s.')
  comparisons = found['comparisons']
  if any('equivalence_level' not in v for v in comparisons.values()):
    raise ValueError(f'{os.path.join(main, VERDICTS_FILE)} predates the equivalence levels a '
                     f'check needs; write it again with `{command}` (it re-reports, training '
                     'nothing).')
  return {label: {'level': v['level'], 'equivalence_level': v['equivalence_level']}
          for label, v in comparisons.items()}


def check_workdirs(workdir: str, name: str, quick: bool) -> dict[str, str]:
  """Where the checks of the experiment in `workdir` write: title -> workdir."""
  parent, suffix = os.path.dirname(os.path.abspath(workdir)), '-quick' if quick else ''
  patience, dataset = protocol.CHECK_PATIENCE, protocol.CHECK_DATASET
  return {f'patience {patience}': os.path.join(parent, f'{name}-patience{patience}{suffix}'),
          dataset: os.path.join(parent, f'{name}-{dataset}{suffix}')}
