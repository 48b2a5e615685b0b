"""Question 4: what is the relation between the number of channels and the kernel size?

Kernel sizes 1, 3, 5, 7, 9 at the note's widths (6, 16), and the same kernel
sizes with the widths rescaled so that the two conv layers hold about as many
parameters as the note's (2,572). 'same' padding everywhere, so every kernel
size gives the same map sizes (28 -> 14 -> 7) and the same dense layers.
Full mode: 9 arms x 5 seeds x 5 epochs, about 15 minutes on 2 CPU cores:
  python -m experiments channels_vs_kernel
"""
import os

from experiments import common
from lenet_jax import arch
from lenet_jax import stats
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
          'parameters of 6 -> 16 with 5x5 kernels.')
TRAINS = True

KERNELS = (1, 3, 5, 7, 9)
NOTE_CONV_PARAMS = 2572


def conv_params(channels, kernel) -> int:
  cfg = ModelConfig(channels=channels, kernel_size=(kernel,), padding=('same',))
  return sum(l.params for l in arch.trace(cfg) if l.kind == 'conv')


def budget_channels(kernel: int) -> tuple[int, int]:
  """Widths (6s, 16s) whose conv parameters come closest to the note's."""
  candidates = {(max(1, round(6 * s / 20)), max(1, round(16 * s / 20))) for s in range(5, 400)}
  return min(candidates, key=lambda c: abs(conv_params(c, kernel) - NOTE_CONV_PARAMS))


def arms(quick):
  del quick
  fixed = [common.Arm(f'k{k} 6->16', {'model.kernel_size': (k,), 'model.padding': ('same',)})
           for k in (5, 3, 7, 1, 9)]
  budget = []
  for k in (3, 7, 9, 1):
    c = budget_channels(k)
    budget.append(common.Arm(f'k{k} {c[0]}->{c[1]} (budget)',
                             {'model.kernel_size': (k,), 'model.padding': ('same',),
                              'model.channels': c}))
  return fixed + budget


def analyse(ctx):
  test = ctx.by_arm('test_acc')
  rows = []
  for arm in ctx.arms:
    cfg = ctx.results_of(arm.label)[0].config.model
    rows.append([arm.label, cfg.kernel_size[0], f'{cfg.channels[0]}->{cfg.channels[1]}',
                 f'{conv_params(cfg.channels, cfg.kernel_size[0]):,}',
                 arch.totals(cfg)['receptive_field']])
  facts = common.markdown_table(['arm', 'kernel', 'channels', 'conv params',
                                 'receptive field'], rows)
  plot = common.plot_accuracy(ctx, 'flops', os.path.join(ctx.workdir, 'acc_vs_flops.png'),
                              'forward FLOPs per image')
  fixed = [a.label for a in ctx.arms if 'budget' not in a.label]
  budget = [a.label for a in ctx.arms if 'budget' in a.label]
  mean = lambda l: stats.summarise(test[l])['mean']
  lines = []
  if 'k5 6->16' in test:
    for other in fixed + budget:
      if other != 'k5 6->16' and test.get(other):
        lines.append('- ' + common.verdict(other, test[other], 'k5 6->16', test['k5 6->16']))
  best_fixed = max(fixed, key=mean) if fixed else None
  best_budget = max(budget, key=mean) if budget else None
  answer = f'''
Each arm against the note's 5x5 (all 'same' padding):

{chr(10).join(lines)}

**Reading.** A conv layer with c_in inputs, c_out outputs and k x k kernels has
k^2 c_in c_out + c_out parameters and costs k^2 c_in c_out multiply-adds per
output pixel, so at a fixed budget the kernel area and the channel product
trade off one for one (doubling k asks for about half the channels in each
layer: see the budget widths). There is no law that ties the channel count to
the kernel size; the two are traded against each other within a budget of
parameters or compute. Best at fixed width: {best_fixed}; best at the fixed
budget: {best_budget or '-'}. Kernel size 1 cannot see neighbouring pixels in
the conv layers (receptive field comes from pooling alone), which the table
shows as its cost.

**Answer.** Channels and kernel size are independent design choices linked only
by cost: parameters and FLOPs scale with k^2 x channels_in x channels_out.
Where the intervals above separate, they show which side of that trade pays
off on Fashion-MNIST; where they overlap, the evidence cannot rank them.'''
  return [('Results', common.arm_table(ctx) + '\n\n' + facts + f'\n\n![{plot}]({plot})'),
          ('Answer', answer)]


