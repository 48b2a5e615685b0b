"""Runs (or resumes) one experiment module: `run` plans, trains, selects, compares and
writes the report.

An experiment module declares `NAME`, `TITLE`, `QUESTION`, `METHOD`, `TRAINS`,
`arms(quick)` (the configurations it compares, as overrides of `base(quick)`)
and `analyse(ctx)` (the report's own sections, written from `ctx`'s verdicts).
`METHOD` says what is particular to the experiment; a training experiment's
report appends `protocol`, the shared budget, tuning and statistics.
Optional: `REFERENCE` (the arm the others are compared with; default the
first), `FAMILIES` (its comparisons, one `protocol.Family` per question it
answers, with hypotheses and primary comparisons; default one family of every
arm against the reference on test accuracy), `MARGIN` (the equivalence margin,
declared before running), `extra(dataset)` (more metrics per run, from its
reported model, computed when the run finishes), `KEEP_PARAMS` (the seeds whose
reported parameters are kept on disk, for analyses that plot them) and
`base(quick)` (its own recipe in place of `protocol.base`). A training
experiment's full mode starts only under its committed pre-registration
(`preregistration`); the checks (`patience`, other data) train the arms of
its primary comparisons.

`run` trains only the runs that have not finished (`training`), stops after
the group in progress once `max_minutes` have passed (or at the epoch in progress
on Ctrl-C or SIGTERM, its finished runs recorded), and writes report.md only
when every run exists (progress.md until then, written at either stop).

The pieces, in import order (each imports only those before it): `protocol`
(budget, arms, plan), `training` (training a plan and its files), `verdicts`
(selection, comparisons, `Context`), `writeup` (report text, tables, plots),
and this module; `evaluation` (accuracy on moved images) stands alone.
"""
import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

from experiments import preregistration
from experiments import protocol
from experiments import training
from experiments import verdicts
from experiments import writeup
from lenet_jax import config as config_lib
from lenet_jax import data as data_lib
from lenet_jax import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class RunStatus:
  """What `run` did: the report's text, or the progress text of a partial run."""
  text: str
  complete: bool
  finished: int
  total: int


def run(module, workdir: str, quick: bool, data_overrides: dict[str, Any] | None = None,
        command: str = '', patience: int | None = None, check: bool = False,
        max_minutes: float | None = None, say: Callable[[str], None] = print) -> RunStatus:
  """Runs (or resumes) one experiment; writes report.md when every run has finished.

  `check`: only the arms of the primary comparisons (the budget check with
  `patience`, or the other-data check), each tested at the level the experiment's own
  analysis gave it (`verdicts.main_levels`: the experiment must have finished).
  `max_minutes`: stop after the group in progress once that long has passed (progress.md
  instead of the report).
  Full mode starts only under its committed pre-registration (`preregistration`).
  """
  start = time.perf_counter()
  base_cfg = module.base(quick) if hasattr(module, 'base') else protocol.base(quick)
  if data_overrides:
    base_cfg = config_lib.override(base_cfg, data_overrides)
  if patience is not None:  # the budget check: the cap grows with the patience
    cap = (protocol.QUICK_EPOCHS + 1 if quick else protocol.CHECK_MAX_EPOCHS
           if patience == protocol.CHECK_PATIENCE else protocol.MAX_EPOCHS * patience // protocol.PATIENCE)
    base_cfg = config_lib.override(base_cfg, {'patience': patience, 'epochs': max(cap, 1)})
  arms = list(module.arms(quick))
  labels = [a.label for a in arms]
  if check:  # the primary comparisons' arms only
    wanted = {label for c in protocol.primary_contrasts(module) for label in (c.arm, c.reference)}
    if not wanted:
      raise ValueError(f'{module.NAME} declares no comparisons to check; run it without '
                       '--patience and --dataset.')
    arms = [a for a in arms if a.label in wanted]
  if quick:
    arms = arms[:protocol.QUICK_ARMS]
  labels = [a.label for a in arms]
  families = protocol.families_of(module, labels)
  levels = None
  if check:  # the declared families' primary comparisons, at the experiment's own levels
    families = [dataclasses.replace(f, contrasts=f.primary_contrasts())
                for f in protocol.families_of(module) if not f.post_hoc]
    levels = verdicts.main_levels(workdir, module.NAME, quick)  # refused before any file
  command = command or (f'python -m experiments {module.NAME}' + (' --quick' if quick else ''))
  os.makedirs(workdir, exist_ok=True)
  registration = None
  if module.TRAINS and not quick:
    registration = preregistration.check_and_record(module, workdir)
  dataset, rows, plan, tuning, trained = None, [], [], None, 0
  if module.TRAINS:
    dataset = data_lib.load(base_cfg.data)
    if quick:
      dataset = protocol.quick_subset(dataset)
    tuning = protocol.QUICK_TUNING_SEEDS if quick else protocol.TUNING_SEEDS
    reported = protocol.QUICK_REPORT_SEEDS if quick else protocol.REPORT_SEEDS
    extra = module.extra(dataset) if hasattr(module, 'extra') else None
    grids = {a.label: a.grid(base_cfg, quick) for a in arms}
    group_size = len(reported) + len(tuning) * max(len(g) for g in grids.values())
    chosen: dict[str, float] = {}
    with workdir_lib.sweep_lock(workdir):
      try:
        while True:  # tune (extending grids past winning edges), then the report seeds
          plan = protocol.make_plan(arms, base_cfg, tuning, reported, dataset, quick, grids,
                                    chosen)
          total = sum(protocol.planned_total(arms, base_cfg, tuning, reported, quick,
                                             grids).values())
          left = (None if max_minutes is None
                  else max_minutes - (time.perf_counter() - start) / 60)
          rows, just_trained = training.train_plan(plan, dataset, workdir,
                                                   getattr(module, 'KEEP_PARAMS', ()), extra,
                                                   left, group_size, say, total)
          trained += just_trained
          state = verdicts.tuning_grids(arms, base_cfg, quick, rows, tuning)
          if state == (grids, chosen) or (max_minutes is not None and
                                          time.perf_counter() - start >= 60 * max_minutes):
            break
          grids, chosen = state
      except training.Interrupted as stop:  # progress.md as --max_minutes writes it; exit 130
        totals = protocol.planned_total(arms, base_cfg, tuning, reported, quick, grids)
        writeup.write_progress(module, workdir, totals, stop.rows, command)
        raise
    if len(rows) < len(plan) or state != (grids, chosen):  # runs left, or tuning not done
      totals = protocol.planned_total(arms, base_cfg, tuning, reported, quick, state[0])
      text = writeup.write_progress(module, workdir, totals, rows, command)
      say(f'partial: {len(rows)} of {sum(totals.values())} runs; run the same command again '
          f'to continue (progress in {os.path.join(workdir, "progress.md")})')
      return RunStatus(text, False, len(rows), sum(totals.values()))
  selected = verdicts.select_rates(arms, rows, tuning) if rows else {}
  margin = _margin(module, base_cfg, selected, dataset, labels)
  outcomes = (verdicts.compare_families(families, selected, margin,
                                        correct=training.correct_loader(workdir),
                                        levels=levels)
              if rows else [])
  ctx = verdicts.Context(quick, workdir, dataset, arms, base_cfg, rows, selected, outcomes,
                         margin, families, registration)
  sections = module.analyse(ctx)
  text = writeup.write_report(ctx, module, sections, command, time.perf_counter() - start,
                              check, training.stray_runs(workdir, plan), trained)
  progress = os.path.join(workdir, 'progress.md')
  if os.path.exists(progress):
    os.remove(progress)
  return RunStatus(text, True, len(rows), len(plan))


def _margin(module, base_cfg, selected, dataset, labels) -> float | None:
  """The module's margin on Fashion-MNIST; elsewhere `protocol.margin_for` the reference
  arm's mean test error there."""
  margin = getattr(module, 'MARGIN', protocol.MARGIN)
  if base_cfg.data.dataset == 'fashion_mnist' or dataset is None:
    return margin
  ref = selected.get(protocol.reference(module, labels))
  accuracies = [r['test_acc'] for r in (ref.ok() if ref else []) if r.get('test_acc') is not None]
  if not accuracies:
    return None
  return protocol.margin_for(1 - sum(accuracies) / len(accuracies), len(dataset.test_images))
