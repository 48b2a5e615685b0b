"""The study's protocol, fixed before any of its runs: the budget rule and seeds,
the arms and their tuning grids, the comparisons and the families they are
corrected in, the plan of runs, and the method text every training report states.

The budget rule (full mode): every run trains at a constant learning rate until
its validation accuracy has not improved for `PATIENCE` epochs (at most
`MAX_EPOCHS`), and the model reported is its best on validation (the earliest of
ties), never the last epoch's. A run that reaches the cap without that plateau
is flagged as not converged. The budget check trains the primary comparisons' arms again
with `CHECK_PATIENCE` (twice the patience, twice the cap): it tests whether a
verdict depends on where the plateau rule stopped, and since the reported model
is the best on validation, not whether a longer run overfits.

Seeds: each arm's learning rate is tuned on `TUNING_SEEDS` (every rate of its
grid; the rate with the best mean validation accuracy is chosen, never on
test), and the arm is reported on `REPORT_SEEDS` at the chosen rate only. The
two sets are disjoint, so the selection's luck on its own seeds does not enter
the reported figures. A rate chosen at the edge of the grid extends it: the
next rate beyond that edge (at the grid's own spacing) trains on the tuning
seeds and the choice is made again, up to `MAX_EXTENSIONS` times per side, so
the chosen rate is an interior optimum unless the report flags it. (The choice
and the extension are `verdicts.tuning_grids`; this module says which runs that
makes, `make_plan`.)

Each comparison (`Contrast`) pairs runs of the same seed; the comparisons that
answer one question of the note form a `Family`, Holm-corrected together at
family-wise `ALPHA`; `MARGIN` is the equivalence margin (`verdicts` computes).
Each experiment module declares its families, with their hypotheses, and
`preregistration` writes them, with everything above, into the file committed
before the experiment's first run (experiments/preregistration/NAME.md).

Quick mode (for tests): 1 tuning and 2 reported seeds, 1 epoch on at most 2,048
training examples, 2 rates per grid, at most 3 arms; its report says it
answers nothing.

`protocol()` states all of this in a report's method from these constants, so
the text cannot drift from what ran.
"""
import dataclasses
from collections.abc import Sequence
from typing import Any

from lenet_jax import config as config_lib
from lenet_jax import data as data_lib
from lenet_jax import loop
from lenet_jax import validation
from lenet_jax.config import Config

REPORT_SEEDS = tuple(range(10))  # every arm is reported on these, paired by seed
TUNING_SEEDS = (100, 101, 102)  # the learning rate is chosen on these; never reported
SCHEDULE = 'constant'  # the learning rate of every run (the plateau rule needs no horizon)
PATIENCE = 5  # a run stops once its validation accuracy has not improved for this many epochs
MAX_EPOCHS = 50  # ... or at this cap (flagged: not converged)
CHECK_PATIENCE = 10  # the budget check: twice the patience ...
CHECK_MAX_EPOCHS = 100  # ... and twice the cap
CHECK_DATASET = 'animal_mnist'  # the other-data check: harder than MNIST, 2,000 test images
# How a check tests the primary comparisons: a post hoc amendment, so every report
# and pre-registration states it as such.
CHECK_LEVELS_AMENDMENT = (
    'each comparison is tested at the levels the experiment\'s own analysis gave it (its '
    'Holm step in the full family, for the difference and for equivalence; read from the '
    'experiment\'s verdicts.json), so that a verdict differs from the experiment\'s only '
    'through the data and the budget. Amended post hoc (2026-12-05), after the checks of '
    'learned_kernels and even_kernels had run: as first registered, a check corrected only '
    'among its own few comparisons, a lighter correction than the experiment\'s (2 against '
    '11 in even_kernels), so a changed verdict could not be told apart from the change of '
    'family.')
QUICK_REPORT_SEEDS = (0, 1)
QUICK_TUNING_SEEDS = (100,)
QUICK_EPOCHS = 1
QUICK_TRAIN_EXAMPLES = 2048
QUICK_ARMS = 3
QUICK_RATES = 2  # the first rates of each grid
# per side of a grid, in full mode (quick mode never extends). Four reach 32x the recipe's
# rate (64e-3 for Adam's 2e-3).
MAX_EXTENSIONS = 4
RATE_FACTORS = (0.5, 1.0, 2.0)  # an arm's default grid: its recipe's rate times these
# The equivalence margin on Fashion-MNIST: half a point of accuracy, 5.4% of the 9.2%
# error the default network reached in the earlier 15-epoch study. On other data the
# margin is the same fraction of the reference arm's error there (`margin_for`), and
# where that is fewer than `MIN_MARGIN_IMAGES` test images, equivalence is not assessed.
MARGIN = 0.005
RELATIVE_MARGIN = 0.054
MIN_MARGIN_IMAGES = 5
ALPHA = 0.05  # family-wise error rate of each family of comparisons
# Metrics in accuracy units, which the margin applies to; others get difference verdicts only.
ACCURACY_PREFIXES = ('acc_', 'drop_')
LR = 'optim.learning_rate'


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



@dataclasses.dataclass(frozen=True)
class Contrast:
  """`arm`'s `metric` minus `reference`'s `reference_metric` (default the same), per seed."""
  arm: str
  reference: str
  metric: str = 'test_acc'
  reference_metric: str | None = None

  @property
  def on_accuracy_scale(self) -> bool:
    """Whether the metric is in accuracy units, the margin's (accuracies and drops)."""
    return all(m == 'test_acc' or m.startswith(ACCURACY_PREFIXES)
               for m in (self.metric, self.reference_metric or self.metric))

  @property
  def label(self) -> str:
    other = self.reference_metric or self.metric
    if other != self.metric:
      return f'{self.arm}: {self.metric} - {other}' if self.arm == self.reference else (
          f'{self.arm} {self.metric} - {self.reference} {other}')
    suffix = '' if self.metric == 'test_acc' else f' ({self.metric})'
    return f'{self.arm} - {self.reference}{suffix}'


@dataclasses.dataclass(frozen=True)
class Family:
  """The comparisons that answer one question of the note, Holm-corrected together.

  `question` is the note's numbering (Q1-Q7, ../shared/NOTES.md) or C1-C4 for
  its claims; `hypothesis` says what is expected and why, written before any
  run of the study. `primary`: the labels of the contrasts the answers table
  shows (default: the first). `post_hoc`: empty when the family was declared
  before its results; otherwise when and why it was added, and every report
  labels it so.
  """
  question: str
  title: str
  hypothesis: str
  contrasts: tuple[Contrast, ...]
  primary: tuple[str, ...] = ()
  post_hoc: str = ''

  def primary_contrasts(self) -> tuple[Contrast, ...]:
    chosen = [c for c in self.contrasts if c.label in self.primary]
    return tuple(chosen) or self.contrasts[:1]


def reference(module, labels: Sequence[str]) -> str:
  return getattr(module, 'REFERENCE', None) or labels[0]


def families_of(module, labels: Sequence[str] | None = None) -> list[Family]:
  """The module's families, each with only the contrasts whose arms are in `labels`
  (quick and check modes run fewer arms; None: all); empty families are dropped.

  A module without FAMILIES is one family: every arm against the reference.
  """
  if not getattr(module, 'TRAINS', True):
    return []
  every = [a.label for a in module.arms(False)]
  families = getattr(module, 'FAMILIES', None)
  if families is None:
    ref = reference(module, every)
    families = (Family(getattr(module, 'QUESTION_ID', module.NAME), module.TITLE, '',
                       tuple(Contrast(label, ref) for label in every if label != ref)),)
  present = set(every if labels is None else labels)
  out = []
  for f in families:
    kept = tuple(c for c in f.contrasts if c.arm in present and c.reference in present)
    if kept:
      out.append(dataclasses.replace(f, contrasts=kept))
  return out


def primary_contrasts(module) -> list[Contrast]:
  """The contrasts the checks repeat: the primary ones of the families declared before
  any result (a post hoc family is reported, not checked), family by family."""
  return [c for f in families_of(module) if not f.post_hoc for c in f.primary_contrasts()]


def contrasts_of(module, labels: Sequence[str]) -> list[Contrast]:
  """The module's comparisons among the arms present, family by family."""
  return [c for f in families_of(module, labels) for c in f.contrasts]


def base(quick: bool, **overrides) -> Config:
  """The default recipe (ReLU, Adam 2e-3, batch 128) at a constant learning rate, under
  the budget rule: PATIENCE epochs without a better validation accuracy, at most
  MAX_EPOCHS (quick mode: QUICK_EPOCHS, no patience)."""
  cfg = config_lib.override(config_lib.default(), {
      'epochs': QUICK_EPOCHS if quick else MAX_EPOCHS, 'optim.schedule': SCHEDULE,
      'patience': None if quick else PATIENCE})
  return config_lib.override(cfg, overrides)


def margin_for(reference_error: float, test_images: int) -> float | None:
  """The equivalence margin on data other than Fashion-MNIST: RELATIVE_MARGIN of the
  reference arm's test error there; None (no equivalence verdicts) when that is
  fewer than MIN_MARGIN_IMAGES test images, below what the test set can resolve."""
  margin = RELATIVE_MARGIN * reference_error
  return margin if margin * test_images >= MIN_MARGIN_IMAGES else None


def quick_subset(dataset: data_lib.Dataset) -> data_lib.Dataset:
  n = QUICK_TRAIN_EXAMPLES
  return dataclasses.replace(dataset, train_images=dataset.train_images[:n],
                             train_labels=dataset.train_labels[:n],
                             val_images=dataset.val_images[:1000],
                             val_labels=dataset.val_labels[:1000],
                             test_images=dataset.test_images[:2000],
                             test_labels=dataset.test_labels[:2000])


@dataclasses.dataclass(frozen=True)
class Planned:
  arm: str
  config: Config  # seed and learning rate set

  @property
  def run_id(self) -> str:
    return config_lib.run_id(self.config)


def make_plan(arms: Sequence[Arm], base_cfg: Config, tuning_seeds: Sequence[int],
              report_seeds: Sequence[int], dataset: data_lib.Dataset, quick: bool,
              grids: dict[str, tuple[float, ...]] | None = None,
              chosen: dict[str, float] | None = None) -> list[Planned]:
  """The runs known so far, in arm order; each config checked before anything trains.

  Per arm: every rate of its grid (`grids`, default the arm's own) on the
  `tuning_seeds`, and, once `chosen` names its rate, that rate on the `report_seeds`.
  """
  if set(tuning_seeds) & set(report_seeds):
    raise ValueError(f'tuning seeds {tuple(tuning_seeds)} and report seeds '
                     f'{tuple(report_seeds)} overlap; they must be disjoint.')
  chosen, grids = chosen or {}, grids or {}
  plan, owner = [], {}
  for arm in arms:
    cfg = loop.with_input_shape(arm.config(base_cfg), dataset)
    validation.check_config(cfg)
    grid = grids.get(arm.label) or arm.grid(base_cfg, quick)
    runs = [(rate, seed) for rate in grid for seed in tuning_seeds]
    if arm.label in chosen:
      runs += [(chosen[arm.label], seed) for seed in report_seeds]
    for rate, seed in runs:
      run = Planned(arm.label, config_lib.override(cfg, {LR: rate, 'seed': seed}))
      if run.run_id in owner:
        raise ValueError(f'arms {owner[run.run_id]!r} and {arm.label!r} train the same '
                         'configuration; give each arm its own overrides.')
      owner[run.run_id] = arm.label
      plan.append(run)
  return plan


def planned_total(arms: Sequence[Arm], base_cfg: Config, tuning_seeds: Sequence[int],
                  report_seeds: Sequence[int], quick: bool,
                  grids: dict[str, tuple[float, ...]] | None = None) -> dict[str, int]:
  """Arm label -> how many runs it trains in all (its grid, as extended so far, on
  the tuning seeds, then the report seeds)."""
  grids = grids or {}
  return {arm.label: len(grids.get(arm.label) or arm.grid(base_cfg, quick)) * len(tuning_seeds)
          + len(report_seeds) for arm in arms}


def budget_words(cfg: Config) -> str:
  """The budget rule a run trained under, from its config."""
  if cfg.patience is None:
    return (f'{cfg.epochs} epoch(s), {cfg.optim.schedule} learning rate, the best-on-validation '
            'epoch\'s model')
  return (f'{cfg.optim.schedule} learning rate until validation accuracy has not improved for '
          f'{cfg.patience} epochs (at most {cfg.epochs}); the best-on-validation model')


def protocol(cfg: Config, margin: float | None = MARGIN) -> str:
  """The study's method, after each training module's METHOD, for runs trained as `cfg`
  (a check trains under its own rule), so the method never states a budget its runs
  did not get."""
  equivalence = (f'an equivalence test (TOST, Holm-corrected the same way) against a '
                 f'margin of +-{100 * margin:.3g} points declared before running'
                 if margin else 'no equivalence test: the margin the rule gives on these data '
                 f'is under {MIN_MARGIN_IMAGES} test images, below what the test set resolves')
  return (f'Budget: {budget_words(cfg)}. Each arm\'s learning rate is tuned on seeds '
          f'{", ".join(map(str, TUNING_SEEDS))}, which train at every rate of its grid (by '
          'default its recipe\'s rate x '
          f'{", ".join(f"{f:g}" for f in RATE_FACTORS)}; e.g. 1e-3, 2e-3, 4e-3 for Adam at '
          '2e-3); the rate with the best mean validation accuracy over those seeds is chosen '
          '(the test set plays no part in the choice). A choice at the edge of the grid '
          'extends it by the next rate beyond that edge, at the grid\'s spacing, and chooses '
          f'again, up to {MAX_EXTENSIONS} times per side; a choice still at an edge is flagged. '
          f'The arm is then reported on seeds {REPORT_SEEDS[0]}-{REPORT_SEEDS[-1]} at the chosen '
          'rate, apart from the tuning seeds. Comparisons are paired by seed (the same seed '
          'gives the same data order and, where shapes match, the same initialisation). Test '
          'accuracy is compared by a paired bootstrap over seeds and test images (both are '
          'samples: per-example correctness of every run is kept), its p-values and intervals '
          'never less cautious than the paired t test\'s over seeds; other metrics by a paired '
          't test over seeds, with no equivalence verdict for those not in accuracy units. Each family of comparisons (those answering one question, declared '
          f'in the pre-registration) is Holm-corrected at family-wise alpha {ALPHA:g}, with '
          f'{equivalence}. Throughput is not reported: the runs were timed on a shared machine.')
