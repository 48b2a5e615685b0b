"""The study's protocol: the budget and seeds, the arms and their tuning grids, the
comparisons, the plan of runs, and the method text every training report states.

The budget (full mode): every arm trains `FULL_EPOCHS` epochs. Its learning
rate is tuned first: every rate of its grid on the tuning seeds (the first
`TUNE_SEEDS` of `FULL_SEEDS`), the rate with the best mean validation
accuracy chosen (never on test); then the other seeds train at the chosen
rate only, and the arm is reported on all of `FULL_SEEDS` at that rate. (A full
grid on every seed would cost twice as much and change only the choice's noise.)
A rate chosen at the edge of the grid extends it: the next rate beyond that
edge (at the grid's own spacing) trains on the tuning seeds and the choice is
made again, up to `MAX_EXTENSIONS` times per side, so the chosen rate is an
interior optimum unless the report flags it. (The choice and the extension are
`verdicts.tuning_grids`; this module says which runs that makes, `make_plan`.)

Each comparison (`Contrast`) pairs runs of the same seed; `MARGIN` and `ALPHA`
are the equivalence margin and the family-wise error rate (`verdicts` computes).

Quick mode (for tests): 2 seeds (the first tunes), 1 epoch on at most 2,048
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
  def label(self) -> str:
    other = self.reference_metric or self.metric
    if other != self.metric:
      return f'{self.arm}: {self.metric} - {other}' if self.arm == self.reference else (
          f'{self.arm} {self.metric} - {self.reference} {other}')
    suffix = '' if self.metric == 'test_acc' else f' ({self.metric})'
    return f'{self.arm} - {self.reference}{suffix}'


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


@dataclasses.dataclass(frozen=True)
class Planned:
  arm: str
  config: Config  # seed and learning rate set

  @property
  def run_id(self) -> str:
    return config_lib.run_id(self.config)


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
