"""Question 4: what is the relation between the number of channels and the kernel size?

Kernel sizes 1, 3, 5, 7, 9 at the note's widths (6, 16), and the same kernel
sizes with the widths rescaled so that the two conv layers hold about as many
parameters as the note's (2,572). 'same' padding everywhere, so every kernel
size gives the same map sizes (28 -> 14 -> 7) and the same dense layers.
Full mode: 14 arms x (3 rates x 3 tuning seeds + 10 report seeds) = 266 runs, 3 more
per grid extension; each run trains at a constant rate until its validation accuracy has
not improved for 5 epochs (at most 50) and reports its best-on-validation model
(experiments/protocol.py). Resumable, e.g. in pieces of 50 minutes:
  python -m experiments channels_vs_kernel --max_minutes=50
The checks train the primary comparisons' 3 arms only: --patience=10 and
--dataset=animal_mnist (docs/experiments.md#the-checks).

Expected runtime: not yet measured under this protocol; the first group prints an
estimate for the whole experiment on the machine at hand.

Result: not yet re-run under the pre-registered protocol
(experiments/preregistration/channels_vs_kernel.md); the superseded study's result is in git
history at 33b43d5 (`git show 33b43d5:experiments/results/channels_vs_kernel/report.md`).
"""
import os

from experiments import protocol
from experiments import verdicts
from experiments import writeup
from lenet_jax import arch
from lenet_jax.config import ModelConfig

NAME = 'channels_vs_kernel'
TITLE = 'Channels vs kernel size'
QUESTION = ('What is the relation between the number of feature maps (channels) and the '
            'kernel size (question 4)? Is there a rule linking them, and what happens '
            'when kernels grow at a fixed width or at a fixed parameter budget?')
METHOD = ('Two families of the note\'s network with \'same\' padding in both blocks: '
          '(a) fixed widths 6 -> 16 with kernels 1, 3, 5, 7, 9; (b) for kernels 3, 7 '
          'and 9 (and 1), widths rescaled by one factor s, (round(6s), round(16s)), '
          'chosen so the two conv layers hold as close as possible to the 2,572 conv '
          'parameters of 6 -> 16 with 5x5 kernels. Every arm is compared with 5x5 at '
          '6 -> 16; (c) a global-average-pooling head, whose dense layers do not change '
          'with the channel count, at 5x5 6 -> 16 and for kernels 3 and 7 with widths '
          'matched to it once on total parameters and once on FLOPs. (a) and (b) are '
          'compared with 5x5 at 6 -> 16, (c) with the gap 5x5 at 6 -> 16.')
TRAINS = True
REFERENCE = 'k5 6->16'

KERNELS = (1, 3, 5, 7, 9)
NOTE_CONV_PARAMS = 2572


def conv_params(channels, kernel) -> int:
  cfg = ModelConfig(channels=channels, kernel_size=(kernel,), padding=('same',))
  return sum(l.params for l in arch.trace(cfg) if l.kind == 'conv')


def budget_channels(kernel: int) -> tuple[int, int]:
  """Widths (6s, 16s) whose conv parameters come closest to the note's."""
  candidates = {(max(1, round(6 * s / 20)), max(1, round(16 * s / 20))) for s in range(5, 400)}
  return min(candidates, key=lambda c: abs(conv_params(c, kernel) - NOTE_CONV_PARAMS))


GAP = {'model.head': 'gap', 'model.padding': ('same',)}
GAP_REFERENCE = 'gap k5 6->16'


def gap_channels(kernel: int, key: str) -> tuple[int, int]:
  """Widths (6s, 16s) whose whole gap-head network comes closest to the 5x5 6->16 one in
  `key` ('params' or 'flops'): with a gap head the dense layers do not grow with c2."""
  target = arch.totals(ModelConfig(channels=(6, 16), padding=('same',), head='gap'))[key]
  candidates = {(max(1, round(6 * s / 20)), max(1, round(16 * s / 20))) for s in range(5, 400)}
  value = lambda c: arch.totals(ModelConfig(channels=c, kernel_size=(kernel,),
                                            padding=('same',), head='gap'))[key]
  return min(candidates, key=lambda c: abs(value(c) - target))


def arms(quick):
  del quick
  fixed = [protocol.Arm(f'k{k} 6->16', {'model.kernel_size': (k,), 'model.padding': ('same',)})
           for k in (5, 3, 7, 1, 9)]
  budget = []
  for k in (3, 7, 9, 1):
    c = budget_channels(k)
    budget.append(protocol.Arm(f'k{k} {c[0]}->{c[1]} (budget)',
                               {'model.kernel_size': (k,), 'model.padding': ('same',),
                                'model.channels': c}))
  gap = [protocol.Arm(GAP_REFERENCE, GAP)]
  for k in (3, 7):
    for key in ('params', 'flops'):
      c = gap_channels(k, key)
      gap.append(protocol.Arm(f'gap k{k} {c[0]}->{c[1]} ({key}-matched)',
                              {**GAP, 'model.kernel_size': (k,), 'model.channels': c}))
  return fixed + budget + gap


def contrasts(labels):
  flatten = [protocol.Contrast(l, REFERENCE) for l in labels
             if l != REFERENCE and not l.startswith('gap')]
  gap = [protocol.Contrast(l, GAP_REFERENCE) for l in labels
         if l.startswith('gap') and l != GAP_REFERENCE]
  return flatten + gap


FAMILIES = (protocol.Family(
    'Q4', 'How does the number of channels relate to the kernel size?',
    'No law ties them; they trade through cost (k^2 c_in c_out weights). Expected at the '
    'note\'s widths: 3x3 and 7x7 equivalent to 5x5 within the margin, 1x1 (no neighbours) '
    'lower, 9x9 lower or equivalent. At a matched conv budget and with a global-average-'
    'pooling head matched on parameters or FLOPs: no prediction of the sign (the earlier '
    'study\'s gap arms were not converged, so it could not say).',
    tuple(contrasts([a.label for a in arms(False)])),
    primary=('k3 6->16 - k5 6->16', 'k9 6->16 - k5 6->16')),)


def analyse(ctx):
  rows = []
  for arm in ctx.arms:
    cfg = ctx.config_of(arm.label).model
    rows.append([arm.label, cfg.kernel_size[0], f'{cfg.channels[0]}->{cfg.channels[1]}',
                 f'{conv_params(cfg.channels, cfg.kernel_size[0]):,}',
                 f"{arch.totals(cfg)['params']:,}", arch.totals(cfg)['receptive_field']])
  facts = writeup.markdown_table(['arm', 'kernel', 'channels', 'conv params', 'all params',
                                  'receptive field'], rows)
  plot = writeup.plot_accuracy(ctx, 'flops', os.path.join(ctx.workdir, 'acc_vs_flops.png'),
                               'forward FLOPs per image')
  fixed = [o for o in ctx.outcomes if o.contrast.reference == REFERENCE
           and 'budget' not in o.contrast.arm]
  budget = [o for o in ctx.outcomes if 'budget' in o.contrast.arm]
  gap = [o for o in ctx.outcomes if o.contrast.reference == GAP_REFERENCE]
  answer = f'''
**At the note's widths (6 -> 16), against 5x5:**

{ctx.lines(fixed) or '(arms not run in this mode)'}

**At the note's conv parameter budget, against 5x5 at 6 -> 16:**

{ctx.lines(budget) or '(arms not run in this mode)'}

**With a gap head (dense layers independent of the channels), against gap 5x5 at 6 -> 16:**

{ctx.lines(gap) or '(arms not run in this mode)'}

**Reading (analytic).** A conv layer with c_in inputs, c_out outputs and k x k
kernels has k^2 c_in c_out + c_out parameters and costs k^2 c_in c_out
multiply-adds per output pixel, so at a fixed budget kernel area and channel
product trade one for one (see the budget widths in the table). Matching the
conv budget does not match the dense layer: more second-layer channels widen
the flatten (the "all params" column).

**Answer.** No rule ties the channel count to the kernel size; they trade
against each other through cost. Measured at fixed width: {verdicts.tally(ctx, fixed)}.
At the fixed conv budget: {verdicts.tally(ctx, budget)}. With the gap head, matched
on total parameters or FLOPs: {verdicts.tally(ctx, gap)}.'''
  return [('Architecture facts', facts + f'\n\n![{plot}]({plot})'), ('Answer', answer)]
