"""The answers table: one row per question of the note, generated from the reports.

  python -m experiments.answers          # rewrites the table in README.md
  python -m experiments.answers --check  # exit 1 if README.md's table is not what this writes

Each trained row shows the family's primary comparisons from the experiment's
verdicts.json, one a line: its verdict in a few words (better / worse / equivalent
within the margin / inconclusive, or higher / lower for a metric other than test
accuracy), its effect and Holm interval, whether it held in each check, and a link
to the report. The data and budget rule the verdicts were measured under are said
once below the table, or in each cell where experiments differ.
A family whose experiment has not finished under the pre-registered protocol says
so, and claims nothing. The questions answered analytically (shapes) are computed
from `lenet_jax.arch`. Below the table, the robustness counts, computed here from
every check's verdicts.
"""
import importlib
import os
import sys

from experiments import EXPERIMENTS
from experiments import preregistration
from experiments import protocol
from experiments import verdicts
from lenet_jax import arch
from lenet_jax.config import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'experiments', 'results')
README = os.path.join(ROOT, 'README.md')
BEGIN, END = '<!-- answers:begin -->', '<!-- answers:end -->'
LINE = '<br>'  # a cell's comparisons, one per line


def _points(x: float) -> str:
  return f'{100 * x:+.2f}'


def _analytic_rows() -> list[list[str]]:
  """Questions 1 and 3, from the shape arithmetic (experiments/shapes.py)."""
  note = arch.trace(ModelConfig(activation='sigmoid'))
  flat = next(l for l in note if l.kind == 'flatten')
  dense1 = next(l for l in note if l.name == 'dense1')
  total = arch.totals(ModelConfig(activation='sigmoid'))['params']
  conv2 = next(l for l in note if l.name == 'block2_conv1').out_shape
  link = '[shapes](experiments/results/shapes/report.md)'
  return [
      ['Q1', 'Why do the maps shrink and thicken?',
       'Unpadded convs (k - 1 pixels) and 2x2 pooling shrink them; depth grows only because '
       'each layer is given more kernels.', 'analytic', 'exact, for any data', link],
      ['Q3', 'How does the conv output map onto the dense layer?',
       f'Flatten: {conv2[2]} x {flat.out_shape[0] // conv2[2]} = {flat.out_shape[0]} inputs; '
       f'dense1 has {dense1.params:,} of the {total:,} parameters '
       f'({100 * dense1.params / total:.0f}%).', 'analytic', 'exact, for any data', link]]


def _answer(c: protocol.Contrast, v: dict, margin: float | None) -> str:
  """The comparison's verdict in a few words: for test accuracy, better / worse /
  equivalent (within the margin) / inconclusive; for another metric, higher or lower."""
  category = verdicts.category(v['verdict'])
  accuracy = c.metric == 'test_acc' and c.reference_metric is None
  if category == 'inconclusive':
    return (f'{c.arm} vs {c.reference}: **inconclusive**' if accuracy
            else f'{c.label}: **inconclusive**')
  if category == 'equivalent':
    within = f' (+-{100 * margin:g} pt)' if margin else ''
    return (f'{c.arm} **equivalent** to {c.reference}{within}' if accuracy
            else f'{c.label}: **equivalent**{within}')
  up = v['estimate'] > 0
  small = f', by less than {100 * margin:g} pt' if category != 'different' else ''
  if accuracy:
    return f'{c.arm} **{"better" if up else "worse"}** than {c.reference}{small}'
  return f'{c.label}: **{"higher" if up else "lower"}**{small}'


def registered(found: dict | None) -> dict | None:
  """`found` (a verdicts.json) if it comes from a full, pre-registered run, else None."""
  if found is None or found.get('quick', True) or not found.get('registration'):
    return None
  return found


def _check_cell(label: str, checks: dict[str, dict | None], main: dict,
                started: set[str]) -> tuple[str, dict]:
  """Whether the verdict holds in each check: per check True (holds), False (does not),
  None (not run, still in progress, or not assessable there)."""
  held, words = {}, []
  for title, checked in checks.items():
    there = (checked or {}).get('comparisons', {}).get(label)
    if there is None:
      held[title] = None
      words.append(f'{title}: {"in progress" if title in started else "not run"}')
      continue
    held[title] = verdicts.agrees(main, there, checked.get('margin'))
    word = {True: 'holds', False: 'does not hold', None: 'not assessable'}[held[title]]
    if held[title] is False:  # what the check found instead
      word += f' ({verdicts.category(there["verdict"])} there)'
    words.append(f'{title}: {word}')
  return '; '.join(words), held


def _measured(found: dict) -> str:
  return f'{found.get("dataset", "?")}, patience {found.get("patience")}'


def _experiments():
  """(name, module, its registered verdicts or None, its checks' verdicts, the checks
  started but not finished) per trained experiment."""
  for name in EXPERIMENTS:
    module = importlib.import_module(f'experiments.{name}')
    if not module.TRAINS:
      continue
    workdir = os.path.join(RESULTS, name)
    where = verdicts.check_workdirs(workdir, name, False)
    checks = {title: registered(verdicts.read_verdicts(d)) for title, d in where.items()}
    # a check's first invocation records its pre-registration before it trains anything
    started = {title for title, d in where.items() if checks[title] is None
               and os.path.exists(os.path.join(d, preregistration.RECORD_FILE))}
    yield name, module, registered(verdicts.read_verdicts(workdir)), checks, started


def rows_and_counts() -> tuple[list[list[str]], dict[str, int], set[str]]:
  """The table's rows (a cell's comparisons one per line), the robustness counts, and
  the datasets and budget rules the verdicts were measured under."""
  rows = _analytic_rows()
  counts = {'primary': 0, 'checked_all': 0, 'hold_all': 0}
  per_check: dict[str, list[int]] = {}
  experiments = list(_experiments())
  measured = {_measured(found) for _, _, found, _, _ in experiments if found}
  for name, module, found, checks, started in experiments:
    link = f'[{name}](experiments/results/{name}/report.md)'
    # the data and budget rule go in each cell only where experiments differ (else below)
    here = f'{_measured(found)}; ' if found and len(measured) > 1 else ''
    for family in protocol.families_of(module):
      title = family.title + (' *(post hoc)*' if family.post_hoc else '')
      if found is None:
        rows.append([family.question, title, 'Pending: not yet run under its '
                     'pre-registration.', '-', '-',
                     f'[pre-registration](experiments/preregistration/{name}.md)'])
        continue
      answers, effects, where = [], [], []
      for c in family.primary_contrasts():
        v = found['comparisons'].get(c.label)
        if v is None:
          answers.append(f'{c.label}: not compared')
          effects.append('-')
          where.append('-')
          continue
        lo, hi = v['interval']
        answers.append(_answer(c, v, found['margin']))
        unit = ' (cosine x100)' if c.metric.startswith('feature_cos') else ''
        effects.append(f'{_points(v["estimate"])} [{_points(lo)}, {_points(hi)}]{unit}')
        if family.post_hoc:  # reported, labelled, never checked nor counted
          where.append(f'{here}not checked (post hoc)')
          continue
        cell, held = _check_cell(c.label, checks, v, started)
        where.append(here + cell)
        counts['primary'] += 1
        for check_title, ok in held.items():
          per_check.setdefault(check_title, [0, 0])
          if ok is not None:
            per_check[check_title][0] += 1
            per_check[check_title][1] += bool(ok)
        if all(ok is not None for ok in held.values()):
          counts['checked_all'] += 1
          counts['hold_all'] += all(held.values())
      rows.append([family.question, title, LINE.join(answers), LINE.join(effects),
                   LINE.join(where), link])
  rows.sort(key=lambda row: (row[0][0] != 'Q', row[0]))  # the note's questions, then its claims
  for check_title, (checked, held) in per_check.items():
    counts[f'checked:{check_title}'] = checked
    counts[f'held:{check_title}'] = held
  return rows, counts, measured


def table() -> str:
  rows, counts, measured = rows_and_counts()
  header = ['', 'question', 'answer', 'effect, points [Holm CI]', 'in the checks', 'report']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(cell.replace('|', '/') for cell in row) + ' |' for row in rows]
  checks = [k.split(':', 1)[1] for k, v in counts.items() if k.startswith('checked:') and v]
  tally = [f'{counts[f"held:{c}"]} of {counts[f"checked:{c}"]} checked hold under {c}'
           for c in checks]
  if len(measured) == 1:
    lines += ['', f'Every verdict above was measured on {next(iter(measured))} (epochs '
              'without a better validation accuracy before a run stops); the checks measure '
              'it again under a longer patience and on other data.']
  lines += ['', f'Robustness (computed by `python -m experiments.answers` from every check\'s '
            'verdicts, each check at its experiment\'s own levels, a post hoc amendment: '
            f'[the checks](docs/experiments.md#the-checks)): {counts["primary"]} primary verdicts'
            + (f'; {"; ".join(tally)}; {counts["hold_all"]} of {counts["checked_all"]} hold in '
               'every check' if tally else '; no check has run yet') + '.']
  return '\n'.join(lines)


def replaced(readme: str, generated: str) -> str:
  if BEGIN not in readme or END not in readme:
    raise ValueError(f'README.md has no {BEGIN} ... {END} block to fill.')
  head, rest = readme.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  return f'{head}{BEGIN}\n{generated}\n{END}{tail}'


def main(argv) -> int:
  with open(README) as f:
    readme = f.read()
  new = replaced(readme, table())
  if '--check' in argv:
    if new != readme:
      print('README.md\'s answers table is not what `python -m experiments.answers` writes; '
            'run it and commit the result.', file=sys.stderr)
      return 1
    return 0
  with open(README, 'w') as f:
    f.write(new)
  print(f'wrote the answers table into {README}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
