"""The write-up: report.md (question, method, the standard sections on tuning,
arms, paired comparisons by family, plots and checks, the experiment's own
sections, how to reproduce it), progress.md while runs are left, and the
tables and plots an experiment's `analyse` uses. Every number comes from the
`verdicts.Context`; nothing here selects or tests.
"""
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments import protocol
from experiments import verdicts
from lenet_jax import bootstrap
from lenet_jax import plots
from lenet_jax import report as report_lib
from lenet_jax import runs as runs_lib
from lenet_jax import stats


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  return report_lib.markdown_table(header, rows)


def _seeds(ctx: verdicts.Context, tuning: bool) -> list[int]:
  """The seeds that chose the rates (`tuning`), or those the arms are reported on."""
  groups = ctx.selected.values()
  if tuning:
    return sorted({r['seed'] for g in groups for c in (g.candidates or {}).values()
                   for r in c.runs})
  return sorted({r['seed'] for g in groups for r in g.runs})


def method_text(module, ctx: verdicts.Context) -> str:
  parts = [f'**Method.** {module.METHOD}']
  cfg = ctx.base_config
  if module.TRAINS:
    parts.append(protocol.protocol(cfg, ctx.margin))
  if ctx.rows:
    margin = f'+-{ctx.margin:.3g}' if ctx.margin else 'none (equivalence not assessed)'
    parts.append(
        f'This run: base recipe {cfg.model.activation}, {cfg.optim.optimizer} '
        f'({cfg.optim.schedule}), batch {cfg.batch_size}, {protocol.budget_words(cfg)}, init '
        f'{cfg.model.init}; tuning seeds {_seeds(ctx, tuning=True)}, reported seeds '
        f'{_seeds(ctx, tuning=False)}; margin '
        f'{margin}. Data: {ctx.dataset.name} from {ctx.dataset.source}, '
        f'{len(ctx.dataset.train_images):,} training, {len(ctx.dataset.val_images):,} '
        f'validation (selection), {len(ctx.dataset.test_images):,} test (reporting) images. '
        'Per-arm intervals are 95% Student-t intervals of the mean over seeds.')
  return ' '.join(parts)


def arm_table(ctx: verdicts.Context, extra_columns: Sequence[str] = ()) -> str:
  """Per arm at its selected rate: runs, metrics with 95% CIs, params and FLOPs."""
  groups = [g for g in ctx.selected.values() if g.runs]
  return report_lib.configuration_table(groups, None, ['val_acc', 'test_acc', *extra_columns])


def tuning_section(ctx: verdicts.Context) -> str:
  groups = list(ctx.selected.values())
  table = report_lib.tuning_table(groups, None, protocol.LR, 'val_acc', 'test_acc')
  edges = []
  for arm in ctx.arms:
    g = ctx.selected[arm.label]
    if g.chosen:
      grid = sorted(g.candidates)
      if g.chosen[protocol.LR] in (grid[0], grid[-1]):
        side = 'lowest' if g.chosen[protocol.LR] == grid[0] else 'highest'
        edges.append(f'{arm.label} (lr {g.chosen[protocol.LR]:g}, the {side} of '
                     f'{len(grid)})')
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
          'each learning rate; the arm is reported at the best one, on the report seeds.\n\n' + table + ('\n\n' + '\n'.join(notes) if notes else ''))


def registration_text(ctx: verdicts.Context) -> str:
  r = ctx.registration
  if not r:
    return ('Not pre-registered: quick mode, or a run from before pre-registration; nothing '
            'here is a confirmatory result.')
  return (f'**Pre-registered** in `{r["file"]}` (sha256 {r["sha256"][:12]}), committed in '
          f'{r["commit"]} before this study\'s first run; the families, hypotheses, arms, '
          'metrics, budget rule, seeds and margin below are the ones stated there.')


def convergence_section(ctx: verdicts.Context) -> str:
  """Per arm at its selected rate: where the budget rule stopped its runs."""
  cfg = ctx.base_config
  if cfg.patience is None:
    return (f'No plateau rule in this mode: every run trained {cfg.epochs} epoch(s), and its '
            'best epoch on validation is reported.')
  rows, capped = [], []
  for label, g in ctx.selected.items():
    runs = g.ok()
    if not runs:
      continue
    ran = sorted(r['epochs_run'] for r in runs)
    best = sorted(r['best_epoch'] for r in runs)
    hit = [r['seed'] for r in runs if r['epochs_run'] >= cfg.epochs
           and r['epochs_run'] - r['best_epoch'] < cfg.patience]
    if hit:
      capped.append(f'{label} (seeds {", ".join(map(str, hit))})')
    rows.append([label, len(runs), f'{ran[len(ran) // 2]} ({ran[0]}-{ran[-1]})',
                 f'{best[len(best) // 2]} ({best[0]}-{best[-1]})', len(hit)])
  text = (f'Each run stopped once its validation accuracy had not improved for {cfg.patience} '
          f'epochs, at most {cfg.epochs}; the reported model is its best on validation. '
          'Median (range) over the reported seeds:\n\n' +
          markdown_table(['arm', 'runs', 'epochs run', 'best epoch', 'stopped by the cap'],
                         rows))
  return text + ('\n\nReached the cap before the plateau rule stopped them, so not shown to '
                 'have converged: ' + '; '.join(capped) + '.' if capped else
                 '\n\nEvery reported run stopped by the plateau rule, before the cap.')


def _family_heading(family) -> str:
  if family is None:
    return ''
  head = f'**{family.question}: {family.title}**' if family.question else ''
  if family.post_hoc:
    head += f' *Post hoc*: {family.post_hoc}'
  if family.hypothesis:
    head += f'\n\nPre-registered hypothesis: {family.hypothesis}'
  return head


def comparisons_section(ctx: verdicts.Context) -> str:
  margin = (f'and, separately, for equivalence (TOST) within +-{ctx.margin:.3g}' if ctx.margin
            else '(no equivalence test: the margin the rule gives here is below what the test '
            'set resolves)')
  text = ('Each row: the first minus the second, paired by seed, at each arm\'s selected rate '
          '(accuracy as a fraction; 0.005 is half a point). Test accuracy: a paired bootstrap '
          'over seeds and test images, never less cautious than the paired t test over seeds; '
          'other metrics: a paired t test over seeds (no equivalence verdict off the accuracy '
          'scale). Holm within '
          f'each family at family-wise alpha {protocol.ALPHA:g}, for the difference {margin}. '
          '"different": the Holm interval excludes 0; "equivalent within +-m": the Holm '
          '(1 - 2 gamma) interval lies inside +-m; "different, but within +-m": both; '
          '"inconclusive": neither.\n\n')
  if any(o.at_levels for o in ctx.outcomes):
    text += (f'A check: {protocol.CHECK_LEVELS_AMENDMENT} Its "Holm" columns are therefore '
             'at those levels (p rescaled to them: p alpha / gamma). As first registered, Holm '
             'among this check\'s '
             'own comparisons, the verdicts were: ' + '; '.join(
                 f'{label}: {v}' for label, v in verdicts.registered_verdicts(
                     ctx.outcomes, ctx.margin).items()) + '.\n\n')
  groups: dict[int, list[verdicts.Outcome]] = {}
  families = {}
  for o in ctx.outcomes:
    groups.setdefault(id(o.family), []).append(o)
    families[id(o.family)] = o.family
  for key, outcomes in groups.items():
    results = [o.result for o in outcomes if o.result]
    missing = [o for o in outcomes if not o.result]
    heading = _family_heading(families[key])
    if heading:
      text += heading + '\n\n'
    if results:
      text += report_lib.comparison_table(results) + '\n\n'
    if missing:
      text += '\n'.join('- ' + verdicts.reading(o, ctx.margin) for o in missing) + '\n\n'
    notes = [f'{r.pairing.group.label}: {r.pairing.note}.' for r in results if r.pairing.note]
    if notes:
      text += '\n'.join(f'- {n}' for n in notes) + '\n\n'
  return text.rstrip()


def _plots(ctx: verdicts.Context) -> list[str]:
  figures = []
  series = {}
  for label, g in ctx.selected.items():
    if g.chosen:
      curves, _ = report_lib.load_curves(ctx.workdir, g.ok(), 'val_acc')
      if curves:
        series[f'{label} (lr {g.chosen[protocol.LR]:g})'] = curves
  if series:
    plots.learning_curves(series, os.path.join(ctx.workdir, 'curves.png'))
    figures.append('![validation accuracy per epoch at each arm\'s selected rate, mean +- 1 '
                   'std over seeds](curves.png)')
  compared = [o for o in ctx.outcomes if o.comparison]
  if compared:
    plots.forest([o.contrast.label for o in compared],
                 [o.comparison.test.estimate for o in compared],
                 [o.comparison.interval for o in compared],
                 [o.comparison.verdict for o in compared], ctx.margin or 0.0,
                 os.path.join(ctx.workdir, 'forest.png'),
                 'difference (first - second), paired by seed; accuracy as a fraction',
                 'paired differences, Holm-corrected intervals')
    figures.append('![paired differences with Holm intervals and the +-margin '
                   'band](forest.png)')
  return figures


def plot_accuracy(ctx: verdicts.Context, x_key: str, path: str, xlabel: str,
                  log_x: bool = True) -> str:
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


def _interaction(ctx: verdicts.Context, outcome: verdicts.Outcome, directory: str,
                 there: dict) -> str:
  """The difference between this experiment's effect and the check's on its other data:
  a bootstrap over both datasets' seeds and test images (95% interval)."""
  if outcome.contrast.metric != 'test_acc' or not outcome.result:
    return '-'
  here_bits = [[runs_lib.read_test_correct(ctx.workdir, i) for i in pair]
               for pair in verdicts.paired_run_ids(outcome, ctx.selected)]
  there_bits = [[runs_lib.read_test_correct(directory, i) for i in pair]
                for pair in there.get('runs', [])]
  flat = [x for pair in here_bits + there_bits for x in pair]
  if not there_bits or any(x is None for x in flat):
    return 'no per-example data'
  test = bootstrap.interaction_bootstrap(
      np.stack([p[0] for p in here_bits]), np.stack([p[1] for p in here_bits]),
      np.stack([p[0] for p in there_bits]), np.stack([p[1] for p in there_bits]))
  lo, hi = test.interval(0.95)
  differs = 'differs' if lo > 0 or hi < 0 else 'not shown to differ'
  return f'{verdicts.points(test.estimate)} ({verdicts.points(lo)} to {verdicts.points(hi)}): {differs}'


def checks_section(module, ctx: verdicts.Context) -> str | None:
  """The primary comparisons, checked with a longer plateau rule and on other data."""
  primary = {c.label for c in protocol.primary_contrasts(module)}
  chosen = [o for o in ctx.outcomes if o.contrast.label in primary]
  if not chosen:
    return None
  checks = verdicts.check_workdirs(ctx.workdir, module.NAME, ctx.quick)
  found = {title: verdicts.read_verdicts(d) for title, d in checks.items()}
  other = protocol.CHECK_DATASET
  rows = []
  for o in chosen:
    here = o.comparison.verdict if o.comparison else 'not compared'
    cells = []
    for title, checked in found.items():
      there = (checked or {}).get('comparisons', {}).get(o.contrast.label)
      if checked is None:
        cells.append('not run yet')
      elif there is None:
        cells.append('not compared there')
      else:
        cells.append(f"{verdicts.holds(o.comparison, there, checked.get('margin'))}: "
                     f"{there['verdict']} ({verdicts.points(there['estimate'])} points)")
    there = (found.get(other) or {}).get('comparisons', {}).get(o.contrast.label)
    cells.append(_interaction(ctx, o, checks[other], there) if there else 'not run yet')
    rows.append([o.contrast.label, here, *cells])
  commands = '\n'.join(
      f'python -m experiments {module.NAME} '
      + (f'--patience={protocol.CHECK_PATIENCE}' if title.startswith('patience')
         else f'--dataset={other}')
      + (' --quick' if ctx.quick else '')
      + f'   # writes {os.path.basename(d)}/' for title, d in checks.items())
  return ('The primary comparisons, checked under a longer plateau rule (patience '
          f'{protocol.CHECK_PATIENCE}, at most {protocol.CHECK_MAX_EPOCHS} epochs) and on '
          f'{other} (its own margin rule), training only their arms. "holds": the same kind of '
          'verdict there, whatever its margin (and sign, for a difference); "not assessable": an '
          'equivalence the check\'s data cannot test. The last column is the difference between the '
          f'effect here and on {other} (difference-in-differences, points, 95% bootstrap '
          'interval over both datasets\' seeds and test images): only where it excludes 0 is '
          'the effect dataset-dependent.\n\n' +
          markdown_table(['comparison', 'verdict here', *checks,
                          f'effect here - effect on {other}'], rows) +
          f'\n\n```\n{commands}\n```')


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


def write_report(ctx: verdicts.Context, module, sections: Sequence[tuple[str, str]],
                 command: str, seconds: float, check: bool = False, strays: Sequence[str] = (),
                 trained: int = 0) -> str:
  lines = [f'# {module.TITLE}', '', f'**Question.** {module.QUESTION}', '']
  if ctx.quick:
    lines += [f'> QUICK MODE: {ctx.base_config.epochs} epoch(s) on at most '
              f'{protocol.QUICK_TRAIN_EXAMPLES:,} training examples, '
              f'{len(protocol.QUICK_TUNING_SEEDS)} tuning and {len(protocol.QUICK_REPORT_SEEDS)} reported seeds, {protocol.QUICK_RATES} learning rates, at '
              f'most {protocol.QUICK_ARMS} arms. These numbers test the pipeline and answer '
              'nothing.', '']
  if check:
    lines += ['> CHECK: only the arms of the primary comparisons, at the settings in the '
              'method line below, each comparison at the experiment\'s own levels (post hoc '
              'amendment; see Paired comparisons); the main report compares its verdicts.', '']
  lines += [method_text(module, ctx), '']
  if ctx.rows:
    figures = _plots(ctx)
    standard = [('Pre-registration', registration_text(ctx)),
                ('Learning rate per arm (chosen on validation)', tuning_section(ctx)),
                ('Budget rule: where each run stopped', convergence_section(ctx)),
                ('Arms at their selected rate', arm_table(ctx)),
                ('Paired comparisons', comparisons_section(ctx))]
    if figures:
      standard.append(('Plots', '\n\n'.join(figures)))
    sections = standard + list(sections)
    checked = None if check else checks_section(module, ctx)
    if checked:
      sections.append(('Checks', checked))
    verdicts.write_verdicts(ctx)
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
