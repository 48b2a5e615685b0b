"""Question 2: how is the growth from 6 to 16 channels decided, and does it matter?

A grid over the two conv layers' channel counts (growing, constant and
shrinking schedules), plus growing/constant/shrinking at a matched conv
parameter budget (6->16, 10->10, 16->6 all have about 2,600-2,800 conv
parameters). The rest is the note's network with the default recipe.
Full mode: 10 arms x (3 rates x 3 tuning seeds + 10 report seeds) = 190 runs, 3 more
per grid extension; each run trains at a constant rate until its validation accuracy has
not improved for 5 epochs (at most 50) and reports its best-on-validation model
(experiments/protocol.py). Resumable, e.g. in pieces of 50 minutes:
  python -m experiments channel_growth --max_minutes=50
The checks train the primary comparisons' 4 arms only: --patience=10 and
--dataset=animal_mnist (docs/experiments.md#the-checks).

Expected runtime (the 2-core CPU machine, 2026-12-04 and 05, mostly shared with another
experiment, so an upper bound): 208 runs as run, over several invocations; the report sums
203.9 minutes of the runs' own compile and training time (about 59 s a run).

Result (experiments/results/channel_growth/report.md, under its pre-registration): against
the note's 6 -> 16, shrinking 16 -> 6 (-0.06 points, Holm CI -0.48 to +0.41) and constant
10 -> 10 (-0.06, -0.47 to +0.35) are equivalent within +-0.5 points, so the growth is not
what matters at this budget; more channels, 16 -> 32, are higher (+0.68, +0.15 to +1.18).
On animal_mnist (82 runs, 15.9 minutes wall; margin +-0.35 points there) 16 -> 32 is higher
again (+1.16, 99.29% CI +0.27 to +2.02), but 16 -> 6 (-0.66, -1.65 to +0.39) and 10 -> 10
(+0.15, -0.66 to +1.00) are inconclusive, so those equivalences do not hold there. Under
patience 10 (94 runs, their report summing 190.2 minutes) 16 -> 32 is higher (+0.66, 99.29%
CI +0.25 to +1.07) and 16 -> 6 equivalent (+0.06, -0.36 to +0.47) again, but 10 -> 10 is
inconclusive (-0.13, -0.56 to +0.31): only 16 -> 32's verdict holds in both checks.
"""
import os

import numpy as np

from experiments import protocol
from experiments import verdicts
from experiments import writeup
from lenet_jax import arch
from lenet_jax import stats

NAME = 'channel_growth'
TITLE = 'Channel growth: is 6 -> 16 designed, learned, or just one good choice?'
QUESTION = ('How is the growth from 6 to 16 channels decided (question 2)? The note '
            'suggests more channels in the second layer keep the two conv layers\' '
            '"parameter sizes" similar; its second source says channel counts are '
            'picked by trying candidates. Where does 6 -> 16 sit among alternatives, '
            'and what does accuracy follow: parameters, FLOPs, or the schedule?')
METHOD = ('Train the note\'s network (5x5 convs, pad 2 then valid, max pooling, dense '
          '120-84-10) with the first and second conv layer\'s channel counts varied: '
          'c1 in {3, 6, 16} x c2 in {6, 16, 32}, plus 10 -> 10, which with 6 -> 16 '
          'and 16 -> 6 compares growing, constant and shrinking at a matched conv '
          'parameter budget. Every arm is compared with 6 -> 16.')
TRAINS = True
REFERENCE = '6->16'

GRID = [(c1, c2) for c1 in (3, 6, 16) for c2 in (6, 16, 32)]
NOTE, CONSTANT, SHRINKING = (6, 16), (10, 10), (16, 6)


def label(channels) -> str:
  return f'{channels[0]}->{channels[1]}'


def arms(quick):
  order = [NOTE, SHRINKING, CONSTANT] + [c for c in GRID if c not in (NOTE, SHRINKING)]
  return [protocol.Arm(label(c), {'model.channels': c}) for c in order]


FAMILIES = (protocol.Family(
    'Q2', 'How is the growth from 6 to 16 channels decided?',
    'Channel counts are chosen by hand, not learned. If the note\'s rationale (growth keeps '
    'the two layers balanced) mattered for accuracy, growing (6->16) would beat constant '
    '(10->10) and shrinking (16->6) at a matched conv parameter budget; expected instead: '
    'those three equivalent within the margin (the earlier 15-epoch study found so), while '
    'width matters: 16->32 above 6->16, and 3 first-layer channels or 6->6 below it.',
    tuple(protocol.Contrast(label(c), label(NOTE))
          for c in [SHRINKING, CONSTANT] + [c for c in GRID if c not in (NOTE, SHRINKING)]),
    primary=('16->6 - 6->16', '10->10 - 6->16', '16->32 - 6->16')),)


def _conv_facts(ctx, arm_label):
  layers = {l.name: l for l in arch.trace(ctx.config_of(arm_label).model)}
  return layers['block1_conv1'], layers['block2_conv1']


def _correlations(ctx, test) -> str:
  """Pearson r, across arms, of mean test accuracy with log parameters and log FLOPs."""
  points = []
  for arm in ctx.arms:
    g = ctx.selected.get(arm.label)
    if g and g.ok() and test.get(arm.label):
      row = g.ok()[0]
      points.append((stats.summarise(test[arm.label])['mean'], row['params'], row['flops']))
  if len(points) < 3:
    return ''
  acc = np.array([p[0] for p in points])
  r_params = np.corrcoef(acc, np.log([p[1] for p in points]))[0, 1]
  r_flops = np.corrcoef(acc, np.log([p[2] for p in points]))[0, 1]
  return (f'Across the {len(points)} arms, mean test accuracy correlates r = {r_flops:.2f} '
          f'with log FLOPs and r = {r_params:.2f} with log parameters (Pearson, descriptive: '
          'the arms are not a random sample of architectures). ')


def analyse(ctx):
  test, val = ctx.by_arm('test_acc'), ctx.by_arm('val_acc')
  conv = {arm.label: _conv_facts(ctx, arm.label) for arm in ctx.arms}
  rows = []
  for arm in ctx.arms:
    conv1, conv2 = conv[arm.label]
    kind = ('growing' if conv2.out_shape[2] > conv1.out_shape[2] else
            'constant' if conv2.out_shape[2] == conv1.out_shape[2] else 'shrinking')
    rows.append([arm.label, kind, f'{conv1.params:,}', f'{conv2.params:,}',
                 f'{conv2.params / conv1.params:.1f}', f'{conv1.macs:,}', f'{conv2.macs:,}',
                 f'{conv2.macs / conv1.macs:.2f}'])
  facts = writeup.markdown_table(
      ['arm', 'schedule', 'conv1 params', 'conv2 params', 'conv2/conv1 params',
       'conv1 MACs', 'conv2 MACs', 'conv2/conv1 MACs'], rows)
  plots = [writeup.plot_accuracy(ctx, 'params', os.path.join(ctx.workdir, 'acc_vs_params.png'),
                                 'parameters'),
           writeup.plot_accuracy(ctx, 'flops', os.path.join(ctx.workdir, 'acc_vs_flops.png'),
                                 'forward FLOPs per image')]
  means = {a.label: stats.summarise(val[a.label])['mean'] for a in ctx.arms if val[a.label]}
  ranked = sorted(means, key=means.get, reverse=True)
  note = label(NOTE)
  c1, c2 = conv[note]
  mac_ratios = {label(c): conv[label(c)][1].macs / conv[label(c)][0].macs
                for c in (NOTE, CONSTANT, SHRINKING)}
  balanced = min(mac_ratios, key=lambda a: abs(np.log(mac_ratios[a])))
  grid = {c: stats.summarise(test[label(c)])['mean'] for c in GRID if test.get(label(c))}
  effects = ''
  if len(grid) == len(GRID):
    by = lambda i, v: stats.summarise([grid[c] for c in GRID if c[i] == v])['mean']
    e1, e2 = by(0, 16) - by(0, 3), by(1, 32) - by(1, 6)
    effects = (f'Averaged over the grid (means at each arm\'s selected rate, descriptive, '
               f'not a test), going from 3 to 16 first-layer channels changes test accuracy by '
               f'{100 * e1:+.2f} points; going from 6 to 32 second-layer channels (which also '
               f'widens the flatten, 25 x c2, and the first dense layer with it) by '
               f'{100 * e2:+.2f} points. ')
  effects += _correlations(ctx, test)
  others = [o for o in ctx.outcomes if o.contrast.reference == note]
  better = [o.contrast.arm for o in others if o.comparison and
            o.comparison.verdict.startswith('different') and o.comparison.test.estimate > 0]
  rank = f'{ranked.index(note) + 1} of {len(ranked)}' if note in ranked else '-'
  answer = f'''
**Where 6 -> 16 sits.** By mean validation accuracy at the selected rates it ranks
{rank}; the best arm by validation is {ranked[0] if ranked else '-'}. Against 6 -> 16
(test accuracy, Holm over all {len(others)} comparisons): {verdicts.tally(ctx, others)}.

**Growing, constant and shrinking at a matched conv budget.** 16 -> 6 against
6 -> 16: {ctx.words(label(SHRINKING))}; 10 -> 10 against 6 -> 16: {ctx.words(label(CONSTANT))}.

**The "similar parameter sizes" explanation (analytic).** In the note's network
conv1 has {c1.params:,} parameters and conv2 {c2.params:,}, a ratio of
{c2.params / c1.params:.0f}: growing from 6 to 16 channels does not make the two layers'
parameter counts similar (conv2's count scales with c1 x c2, conv1's with c1
alone). {'It does balance compute' if balanced == note else 'Nor does it balance compute'}: conv1 does {c1.macs:,} and conv2 {c2.macs:,}
multiply-adds per image; among the three schedules at the matched conv budget, the
conv2/conv1 multiply-add ratios are
{', '.join(f'{a} {r:.2f}' for a, r in mac_ratios.items())}: the most balanced is {balanced}.

**What accuracy follows.** {effects}See the plots of test accuracy against
parameters and FLOPs.

**Answer.** Channel counts are configuration values: training never changes
them, so they are chosen by hand. Among the alternatives here, the arms shown
higher than 6 -> 16 are: {', '.join(better) or 'none'}.'''
  return [('Architecture facts', facts + '\n\n' + '\n\n'.join(f'![{p}]({p})' for p in plots)),
          ('Answer', answer)]
