"""The report's markdown: tables of configurations, tuning and comparisons, and the
sentence per comparison. Pure functions over `comparisons` groups and results.
"""
import math
from collections.abc import Sequence
from typing import Any

from lenet_jax import fields as fields_lib
from lenet_jax import stats
from lenet_jax.comparisons import Group, Result, mean, show


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ['| ' + ' | '.join(map(str, header)) + ' |',
           '|' + '|'.join('---' for _ in header) + '|']
  lines += ['| ' + ' | '.join(map(str, r)) + ' |' for r in rows]
  return '\n'.join(lines)


def ci_cell(values: Sequence[float]) -> str:
  """'mean +- std [lo, hi]', the 95% t interval of the mean over seeds."""
  s = stats.summarise(values)
  if s['n'] == 0:
    return '-'
  if s['n'] == 1:
    return f"{s['mean']:.4f} (1 seed)"
  return (f"{s['mean']:.4f} +- {s['std']:.4f} "
          f"[{s['mean'] - s['ci95']:.4f}, {s['mean'] + s['ci95']:.4f}]")


def configuration_table(groups: Sequence[Group], baseline: Group | None,
                        metrics: Sequence[str]) -> str:
  rows = []
  for g in groups:
    ok = g.ok()
    name = g.label + (' (baseline)' if g is baseline else '')
    first = g.runs[0]
    rows.append([name, f'{len(ok)}/{len(g.runs)}'] +
                [ci_cell([r[m] for r in ok if r.get(m) is not None]) for m in metrics] +
                [f"{first['params']:,}", f"{first['flops'] / 1e6:.2f}"])
  header = (['configuration', 'ok/runs'] +
            [f'{m} mean +- std [95% CI]' for m in metrics] + ['params', 'MFLOPs/img'])
  return markdown_table(header, rows)


def tuning_table(groups: Sequence[Group], baseline: Group, tuned: str, select_on: str,
                 metric: str) -> str:
  name = fields_lib.flag_name(tuned)
  rows = []
  for g in groups:
    tried = '; '.join(
        f'{show(v)}: {mean([r[select_on] for r in c.ok()]):.4f} ({len(c.ok())}/{len(c.runs)} ok)'
        for v, c in g.candidates.items())
    rows.append([g.label + (' (baseline)' if g is baseline else ''),
                 show(g.chosen[tuned]) if g.chosen else 'none', tried,
                 ci_cell([r[metric] for r in g.ok() if r.get(metric) is not None])])
  return markdown_table(['configuration', f'chosen {name}', f'mean {select_on} per {name}',
                         f'{metric} of the chosen'], rows)


def _percent(level: float) -> str:
  return f'{100 * level:.4g}%'


def _signed(x: float) -> str:
  return f'{x:+.4f}'


def _span(interval: tuple[float, float]) -> str:
  return f'[{_signed(interval[0])}, {_signed(interval[1])}]'


def comparison_table(results: Sequence[Result]) -> str:
  rows = []
  for res in results:
    p, c = res.pairing, res.comparison
    if c is None:
      rows.append([p.group.label, len(p.seeds)] + ['-'] * 6 + ['not compared'])
      continue
    rows.append([p.group.label, len(p.seeds), _signed(c.test.estimate),
                 _span(c.test.interval(0.95)), f'{_span(c.interval)} ({_percent(c.level)})',
                 f'{c.p:.3g}', f'{c.p_holm:.3g}',
                 '-' if math.isnan(c.p_equivalent_holm) else f'{c.p_equivalent_holm:.3g}',
                 f'**{c.verdict}**'])
  return markdown_table(['configuration', 'pairs', 'mean diff', '95% CI (uncorrected)',
                         'Holm CI (level)', 'p', 'p (Holm)', 'TOST p (Holm)', 'verdict'], rows)


def verdict_lines(results: Sequence[Result], metric: str) -> list[str]:
  lines = []
  for res in results:
    p, c = res.pairing, res.comparison
    if c is None:
      lines.append(f'- {p.group.label}: not compared: {len(p.seeds)} seed(s) finished in both '
                   'it and the baseline, and a paired test needs 2; run more seeds.')
      continue
    same = ' Every pair differs by the same amount.' if c.test.se == 0 else ''
    lines.append(f'- {p.group.label}: **{c.verdict}**: {metric} {_signed(c.test.estimate)} '
                 f'(Holm {_percent(c.level)} CI {_span(c.interval)}, {len(p.seeds)} paired seeds).'
                 f'{same}')
  return lines
