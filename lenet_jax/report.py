"""The report of a sweep's workdir: configurations, paired comparisons, verdicts, plots.

  python -m lenet_jax.report WORKDIR [WORKDIR ...] --baseline='channels=6,16'
      [--metric=test_acc] [--tune=learning_rate --select_on=val_acc] [--margin=0.005]
      [--alpha=0.05] [--out=DIR] [--allow_incomplete]

A configuration is one value of every swept field (sweep.json's axes; for a
workdir without one, the config fields that vary between runs; with several
workdirs, both, plus the fields that differ between them, so arms that are not
one Cartesian product, such as fields changed together, are compared as one
sweep); its runs are its seeds. Every configuration is compared with the
baseline on `--metric` by a paired t test on the per-seed differences (runs of
the same seed), the comparisons corrected together with Holm, and an
equivalence test (TOST) against `--margin`; `stats.compare` has the rules. With
`--tune`, each configuration first picks the value of the tuned field with the
best mean `--select_on` (validation, never test) over its seeds.

A sweep whose planned runs (sweep.json) have not all finished is refused, with
the count, unless --allow_incomplete, which lists them in the report. Writes
report.md, curves.png and forest.png to --out (default WORKDIR/report for one
workdir) as a whole, replacing any previous report only once the new one is
complete, and prints report.md. The configurations and their comparisons are
`comparisons.py`'s, the markdown tables `tables.py`'s; here they are loaded,
assembled (`build`, pure: rows in, report out) and written.
"""
import collections
import dataclasses
import functools
import json
import math
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from absl import flags

from lenet_jax import console
from lenet_jax import fields as fields_lib
from lenet_jax import runs
from lenet_jax import workdir as workdir_lib
# The report's pieces, importable from here as before.
from lenet_jax.comparisons import (RUN_FACTS, Group, Pairing, Result, canonical,  # noqa: F401
                                   check_metric, check_select_on, compare_to_baseline,
                                   field_key, find_baseline, group_rows, higher_is_better,
                                   metric_names, near_chance, near_chance_note, pair,
                                   parse_selector, show, tune)
from lenet_jax.tables import (ci_cell, comparison_table, configuration_table,  # noqa: F401
                              markdown_table, tuning_table, verdict_lines)

# What `write` puts in --out: a directory holding anything else is not replaced.
REPORT_FILES = frozenset({'report.md', 'curves.png', 'forest.png'})


# ----------------------------------------------------------------------------
# Loading


def load_rows(workdir: str) -> list[dict[str, Any]]:
  """The rows of WORKDIR/results.jsonl, one per finished run, each with its 'workdir'."""
  return runs.read_results(workdir)


def _recorded_sweep(workdir: str) -> dict[str, Any] | None:
  """WORKDIR/sweep.json (its axes and seeds), or None for a workdir without one."""
  try:
    recorded = runs.read_sweep_json(workdir)
  except runs.UnreadableSweep as e:
    raise ValueError(f'{e.path} cannot be read as a sweep ({e.reason}); it says which '
                     'fields were swept. Restore it, or move it away to treat every config '
                     'field that varies between runs as swept.') from None
  if recorded is not None and 'axes' not in recorded:
    raise ValueError(f'{runs.sweep_path(workdir)} cannot be read as a sweep (it has no axes); '
                     'it says which fields were swept. Restore it, or move it away to treat '
                     'every config field that varies between runs as swept.')
  return recorded


def swept_fields(workdir: str, rows: list[dict[str, Any]]) -> list[str]:
  """The config keys a configuration is made of: sweep.json's axes, else what varies."""
  recorded = _recorded_sweep(workdir)
  if recorded is not None:
    return [k for k in recorded['axes'] if any(k in r for r in rows)]
  return _varying(rows)


def unfinished_runs(workdir: str, rows: Sequence[dict[str, Any]]) -> tuple[int, list[str]]:
  """(how many runs sweep.json plans, a label for each planned run without a row).

  The plan is the recorded sweep expanded again (`sweep.expand`), so a point is
  matched by its run id, as the sweep resolved it (a validation_size of None
  is the dataset's default there). A diverged run has a row: it finished.
  Without a sweep.json the plan is not known, and the rows are taken as all of
  it.
  """
  recorded = _recorded_sweep(workdir)
  if recorded is None:
    return len(rows), []
  from lenet_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from lenet_jax import sweep as sweep_lib  # pylint: disable=import-outside-toplevel
  axes = {k: [tuple(v) if isinstance(v, list) else v for v in values]
          for k, values in recorded['axes'].items()}
  seeds = tuple(recorded.get('seeds') or sorted({r.get('seed') for r in rows}))
  try:
    planned = sweep_lib.expand(sweep_lib.Sweep(
        config_lib.from_dict(recorded.get('base', {})), axes, seeds))
  except (ValueError, TypeError) as e:
    raise ValueError(f'{runs.sweep_path(workdir)} does not describe a sweep this version '
                     f'can expand ({type(e).__name__}: {str(e)[:160]}), so the runs it plans '
                     'are not known; give --allow_incomplete to report on the runs that '
                     'finished.') from None
  have = {r.get('run_id') for r in rows}
  value = lambda cfg, key: functools.reduce(getattr, key.split('.'), cfg)
  missing = []
  for cfg in planned:
    if config_lib.run_id(cfg) not in have:
      label = '; '.join(f'{fields_lib.flag_name(k)}={show(canonical(k, value(cfg, k)))}'
                        for k in axes)
      missing.append(f'{label or "the run"} seed {cfg.seed}')
  return len(planned), missing


def _varying(rows: Sequence[dict[str, Any]]) -> list[str]:
  """The config fields whose value is not the same in every row."""
  keys = dict.fromkeys(k for r in rows for k in r if k in fields_lib.FIELDS)
  return [k for k in keys if len({json.dumps(r.get(k)) for r in rows}) > 1]


def load_sweeps(workdirs: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
  """The rows of every workdir and the fields a configuration is made of.

  One workdir: its `swept_fields`. Several: every workdir's swept fields, then
  the fields that differ between workdirs (so two sweeps that differ in several
  fields at once become two configurations). A run found in two workdirs (the
  same run id: the same config and seed) is refused, since it would be paired
  with itself.
  """
  if len(set(workdirs)) != len(workdirs):
    raise ValueError(f'workdirs {", ".join(workdirs)}: one is given twice; give each once.')
  rows, fields, seen = [], {}, {}
  for workdir in workdirs:
    mine = load_rows(workdir)
    for row in mine:
      if row['run_id'] in seen:
        raise ValueError(f'run {row["run_id"]} (seed {row.get("seed")}) is in both '
                         f'{seen[row["run_id"]]} and {workdir}: the same configuration and '
                         'seed trained twice. Report on workdirs that hold each run once.')
      seen[row['run_id']] = workdir
    fields.update(dict.fromkeys(swept_fields(workdir, mine)))
    rows += mine
  if len(workdirs) > 1:
    fields.update(dict.fromkeys(_varying(rows)))
  return rows, list(fields)


def load_curves(workdir: str, rows: Sequence[dict[str, Any]], key: str
                ) -> tuple[list[list[float]], list[str]]:
  """Per run, `key` per epoch from its metrics (runs.read_history); and the ids that have none."""
  curves, missing = [], []
  for row in rows:
    epochs = runs.read_history(workdir, row['run_id'])
    if epochs is None:
      missing.append(row['run_id'])
    else:
      curves.append([float(e.get(key, math.nan)) for e in epochs])
  return curves, missing


@dataclasses.dataclass(frozen=True)
class Options:
  workdir: str
  baseline: str
  metric: str = 'test_acc'
  select_on: str = 'val_acc'
  tune: str | None = None
  margin: float = 0.005
  alpha: float = 0.05
  command: str = ''
  planned: int | None = None  # runs the sweep(s) plan; None: the rows are all of them
  unfinished: tuple[str, ...] = ()  # a label per planned run that has no row


@dataclasses.dataclass
class Report:
  body: str  # the markdown before the notes
  notes: list[str]  # what was left out and why; `write` adds the plots' own
  groups: list[Group]  # the compared configurations (tuned, with --tune)
  baseline: Group
  results: list[Result]

  def render(self, figures: Sequence[str] = ()) -> str:
    """The whole report.md: body, notes, then the figures' markdown."""
    text = self.body
    if self.notes:
      text += '\n## Notes\n\n' + '\n'.join(f'- {n}' for n in self.notes) + '\n'
    if figures:
      text += '\n## Plots\n\n' + '\n\n'.join(figures) + '\n'
    return text


def build(rows: Sequence[dict[str, Any]], fields: Sequence[str], opts: Options) -> Report:
  """Every table and verdict of the report, from the rows; nothing is read or written."""
  if not 0 < opts.alpha < 0.5:  # NaN fails this too
    raise ValueError(f'--alpha={opts.alpha} must be in (0, 0.5).')
  if not (opts.margin > 0 and math.isfinite(opts.margin)):
    raise ValueError(f'--margin={opts.margin} must be a finite number > 0, in units of '
                     '--metric (0.005 is half a point of accuracy).')
  check_select_on(opts.select_on)
  check_metric(opts.metric, rows, '--metric')
  check_metric(opts.select_on, rows, '--select_on')
  tuned = field_key(opts.tune, fields, '--tune') if opts.tune else None
  selector = parse_selector(opts.baseline, fields)
  if tuned and tuned in selector:
    raise ValueError(f'--baseline={opts.baseline!r} names {opts.tune}, the field --tune '
                     'chooses; leave it out of the baseline.')
  every = group_rows(rows, fields)
  notes = []
  merged = tune(every, tuned, opts.select_on) if tuned else every
  baseline = find_baseline(merged, selector, opts.baseline)
  if tuned and not baseline.chosen:
    raise ValueError(f'the baseline {baseline.label} has no value of {opts.tune} that finished '
                     'on every seed, so none can be chosen; pick another --baseline, or '
                     'compare without --tune.')
  compared = [g for g in merged if g.chosen] if tuned else every
  notes += [f'{g.label}: no value of {opts.tune} finished on every seed, so nothing was '
            'chosen and it is not compared.' for g in merged if tuned and not g.chosen]
  results = compare_to_baseline(compared, baseline, opts.metric, opts.margin, opts.alpha)

  for g in every:
    for r in g.runs:
      if r['status'] != 'ok':
        notes.append(f'{g.label}: seed {r["seed"]} {r["status"]}'
                     + (f' in epoch {r["diverged_epoch"]}' if r.get('diverged_epoch') else '')
                     + ' (run ' + r['run_id'] + '); left out of every mean, pair and choice.')
  notes += [n for n in map(near_chance_note, [baseline] + [g for g in compared
                                                              if g is not baseline]) if n]
  notes += [f'{res.pairing.group.label}: {res.pairing.note}.' for res in results
            if res.pairing.note]
  if tuned and opts.metric == opts.select_on:
    notes.append(f'--metric={opts.metric} is also what --tune selected on, so the chosen '
                 'values look better on it than they would on fresh data.')

  if opts.unfinished:
    shown = list(opts.unfinished[:20]) + ([f'and {len(opts.unfinished) - 20} more']
                                          if len(opts.unfinished) > 20 else [])
    notes.insert(0, f'{len(opts.unfinished)} of the {opts.planned} planned runs have not '
                 f'finished and are in no table: {", ".join(shown)}.')
  seeds = sorted({r['seed'] for r in rows})
  statuses = ', '.join(f'{n} {s}' for s, n in collections.Counter(
      r['status'] for r in rows).items())
  first = rows[0]
  swept = ', '.join(f'{fields_lib.flag_name(k)} ({len({show(g.values[k]) for g in every})} '
                    'values)' for k in fields) or 'nothing'
  metrics = list(dict.fromkeys(['val_acc', 'test_acc', opts.metric]))
  metrics = [m for m in metrics if m in metric_names(rows)]
  m = sum(res.comparison is not None for res in results)
  lines = [f'# Sweep report: {opts.workdir}', '', f'```\n{opts.command}\n```', '',
           f'{len(rows)} runs in results.jsonl ({statuses})'
           + (f' of {opts.planned} planned ({len(opts.unfinished)} not finished: see the '
              'notes)' if opts.unfinished else '') + f'; swept: {swept}; '
           f'seeds {", ".join(map(str, seeds))}; data {first.get("data.dataset", "?")}, '
           f'{first.get("epochs", "?")} epoch(s).', '',
           '## Configurations', '',
           'Mean +- std over the seeds that finished, and the 95% Student-t interval of '
           'the mean.', '',
           configuration_table(every, None if tuned else baseline, metrics), '']
  if tuned:
    lines += [f'## Tuning {opts.tune} on {opts.select_on}', '',
              f'For each configuration, the {opts.tune} with the best mean {opts.select_on} '
              'over seeds, among the values that finished on every seed; the test set '
              'plays no part in the choice.', '',
              tuning_table(merged, baseline, tuned, opts.select_on, opts.metric), '']
  lines += [f'## {opts.metric} against the baseline {baseline.label}', '',
            f'Paired by seed: the difference (configuration - baseline) of each seed\'s '
            f'{opts.metric}, a t test on those differences. Holm over the {m} '
            f'comparison(s) made at family-wise alpha {opts.alpha:g}, for the difference '
            f'and, separately, for equivalence (TOST) within +-{opts.margin:g}. '
            '"different": the Holm interval excludes 0; "equivalent within +-m": the '
            f'Holm (1 - 2 gamma) interval lies inside +-m; "different, but within +-m": '
            'both; "inconclusive": neither.', '']
  if results:
    lines += [comparison_table(results), '', *verdict_lines(results, opts.metric)]
  else:
    lines += ['(only the baseline: nothing to compare)']
  return Report('\n'.join(lines) + '\n', notes, compared, baseline, results)


def write(report: Report, out: str, margin: float, metric: str) -> str:
  """Writes the plots and report.md into `out` as a whole (`workdir.atomic_directory`:
  an interrupted write leaves the previous report, or none), curves read from each
  run's own workdir; returns report.md's text."""
  from lenet_jax import plots  # pylint: disable=import-outside-toplevel
  with workdir_lib.atomic_directory(out, REPORT_FILES) as tmp:
    figures = []
    series = {}
    for g in report.groups:
      name = g.label + ''.join(f' (chosen {fields_lib.flag_name(k)}={show(v)})'
                               for k, v in (g.chosen or {}).items())
      curves, missing = [], []
      for run in g.ok():
        found, absent = load_curves(run['workdir'], [run], 'val_acc')
        curves += found
        missing += absent
      if missing:
        report.notes.append(f'{g.label}: no metrics.jsonl for run(s) {", ".join(missing)}; '
                            'they are not in curves.png.')
      if curves:
        series[name] = curves
    if series:
      plots.learning_curves(series, os.path.join(tmp, 'curves.png'))
      figures.append('![validation accuracy per epoch, mean +- 1 std over seeds](curves.png)')
    compared = [r for r in report.results if r.comparison is not None]
    if compared:
      plots.forest([r.pairing.group.label for r in compared],
                   [r.comparison.test.estimate for r in compared],
                   [r.comparison.interval for r in compared],
                   [r.comparison.verdict for r in compared], margin,
                   os.path.join(tmp, 'forest.png'),
                   f'{metric}: configuration - baseline (paired by seed)',
                   f'against {report.baseline.label}; Holm-corrected intervals')
      figures.append('![paired differences with Holm intervals and the margin](forest.png)')
    text = report.render(figures)
    with open(os.path.join(tmp, 'report.md'), 'w') as f:
      f.write(text)
  return text


def _flags() -> flags.FlagValues:
  """The report's own flags, in a FlagValues of their own: `main` can be called
  again in one process, and importing the report defines nothing globally."""
  fv = flags.FlagValues()
  flags.DEFINE_string('baseline', None,
                      "The configuration the others are compared with, in run.py's flag "
                      "syntax: 'channels=6,16', several fields separated by ';'.",
                      flag_values=fv)
  flags.DEFINE_string('metric', 'test_acc', 'What is compared.', flag_values=fv)
  flags.DEFINE_string('tune', None, 'A swept field chosen per configuration on --select_on, '
                      'e.g. learning_rate.', flag_values=fv)
  flags.DEFINE_string('select_on', 'val_acc', 'What --tune maximises (minimises for a loss); '
                      'never test_*.', flag_values=fv)
  flags.DEFINE_float('margin', 0.005, 'Equivalence margin, in units of --metric, stated '
                     'before looking.', flag_values=fv)
  flags.DEFINE_float('alpha', 0.05, 'Family-wise error rate.', flag_values=fv)
  flags.DEFINE_string('out', None, 'Output directory (default WORKDIR/report; required with '
                      'several workdirs).', flag_values=fv)
  flags.DEFINE_boolean('allow_incomplete', False, "Report on the runs that finished when "
                       "some of the sweep's planned runs have not (they are listed in the "
                       'notes); without it such a report is refused.', flag_values=fv)
  return fv


def _fail(message: str) -> int:
  print(f'error: {message}', file=sys.stderr)
  return 2


def main(argv: Sequence[str] | None = None) -> int:
  """The command: WORKDIR [WORKDIR ...] and the flags of `_flags`; returns the exit status."""
  argv = list(sys.argv[1:] if argv is None else argv)
  fv = _flags()
  if any(a in ('-h', '--help', '-help', '--helpfull') for a in argv):
    print(__doc__ + '\nflags:\n' + fv.get_help(include_special_flags=False))
    return 0
  try:
    workdirs = fv(['report', *argv])[1:]
  except flags.Error as e:
    return _fail(f'{e}. Run with --help to list the flags.')
  if not workdirs:
    return _fail('give the --workdir of a sweep (python -m lenet_jax.report WORKDIR '
                 "--baseline='channels=6,16').")
  if not fv.baseline:
    return _fail("--baseline is required: the configuration the others are compared with, "
                 "e.g. --baseline='channels=6,16'.")
  if fv.out is None and len(workdirs) > 1:
    return _fail(f'{len(workdirs)} workdirs and no --out: say where the report goes '
                 '(--out=DIR), since it belongs to none of them alone.')
  out = fv.out or os.path.join(workdirs[0], runs.REPORT_DIR)
  try:
    rows, fields = load_sweeps(workdirs)
    planned, unfinished, unknown_plans = 0, [], []
    for workdir in workdirs:
      mine = [r for r in rows if r['workdir'] == workdir]
      try:
        count, missing = unfinished_runs(workdir, mine)
      except ValueError as e:
        if not fv.allow_incomplete:
          raise
        count, missing = len(mine), []  # the plan is not known: report what is there
        unknown_plans.append(f'{workdir}: {str(e).split("; give --allow_incomplete")[0]}; '
                             'this report covers the runs that finished, whatever was '
                             'planned.')
      planned, unfinished = planned + count, unfinished + [
          f'{m} (in {workdir})' if len(workdirs) > 1 else m for m in missing]
    if unfinished and not fv.allow_incomplete:
      raise ValueError(f'{len(unfinished)} of the {planned} runs the sweep plans have not '
                       f'finished (first: {unfinished[0]}); finish the sweep (run it again '
                       'with the same flags: it resumes), or give --allow_incomplete to '
                       'report on the runs that did.')
    opts = Options(' '.join(workdirs), fv.baseline, fv.metric, fv.select_on, fv.tune,
                   fv.margin, fv.alpha,
                   shlex.join(['python', '-m', 'lenet_jax.report', *argv]),
                   planned, tuple(unfinished))
    report = build(rows, fields, opts)
    report.notes[:0] = unknown_plans  # said first, since it bounds every table
    text = write(report, out, fv.margin, fv.metric)
  except ValueError as e:
    return _fail(str(e))
  except OSError as e:
    return _fail(f'cannot write the report to --out={out} ({e.strerror}); choose another '
                 'directory.')
  except KeyboardInterrupt:
    print(f'interrupted: {out} holds the previous report (or none), or the whole new one; '
          'never a part of one.', file=sys.stderr)
    return 130
  print(text)
  print(f'written to {out}')
  return 0


if __name__ == '__main__':
  console.install()
  sys.exit(main())
