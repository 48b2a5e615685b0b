"""Question 7: kernels need not be known in advance; training learns them from random.

The first layer's kernels at initialisation and after training, as images; the
feature maps of a few test images; how far training moves the kernels; and
what learning them is worth: the same network with the first conv layer (or
both conv layers) frozen at its random initialisation.
Full mode: 3 arms x (3 rates x 3 tuning seeds + 10 report seeds) = 57 runs, 3 more
per grid extension; each run trains at a constant rate until its validation accuracy has
not improved for 5 epochs (at most 50) and reports its best-on-validation model
(experiments/protocol.py). Resumable, e.g. in pieces of 50 minutes:
  python -m experiments learned_kernels --max_minutes=50
The checks train the primary comparisons' 2 arms only: --patience=10 and
--dataset=animal_mnist (docs/experiments.md#the-checks).

Expected runtime (the 2-core CPU machine, 2026-12-05, shared with test runs, so an
upper bound): 63 runs as run (the reference's and the both-frozen arm's grids extended
down to 5e-4), about 58 minutes wall in two invocations; the report sums 58.0 minutes
of the runs' own compile and training time (experiments/results/learned_kernels/report.md).

Result (experiments/results/learned_kernels/report.md, under its pre-registration):
training moves the first layer's kernels by 0.80 +- 0.25 of their initial norm; freezing
conv1 at its random start costs 0.71 points (Holm 95% CI 0.37 to 1.07) and freezing both
conv layers 3.61 points (2.96 to 4.27), both "different"; every reported run stopped by
the plateau rule (median 19-24 epochs).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments import protocol
from lenet_jax import arch
from lenet_jax import stats
from lenet_jax.model import LeNet5

NAME = 'learned_kernels'
TITLE = 'Learned kernels: from random to trained'
QUESTION = ('The note says the kernels need not be chosen in advance: start from random '
            'ones and training learns suitable kernels (question 7). What do the learned '
            'first-layer kernels look like, how far do they move from their random '
            'start, and how much accuracy does learning them buy?')
MARGIN = protocol.MARGIN
METHOD = ('The note\'s network with the default recipe, trained normally (the reference); '
          'the same with block1_conv1 frozen at its random (LeCun-normal) initialisation; '
          'and with both conv layers frozen (random convolutional features, trained dense '
          'layers). How far conv1 moved, ||W_trained - W_init|| / ||W_init||, is measured '
          'on every run; kernels and feature maps are shown for seed 0 of the normally '
          'trained arm at its selected rate.')
TRAINS = True
KEEP_PARAMS = (0,)  # seed 0's final parameters, for the kernel and feature-map plots
REFERENCE = 'all layers learned'

ARMS = {'all layers learned': {},
        'conv1 frozen at random init': {'optim.frozen': ('block1_conv1',)},
        'both convs frozen at random init': {'optim.frozen': ('block1_conv1', 'block2_conv1')}}


def arms(quick):
  del quick
  return [protocol.Arm(label, overrides) for label, overrides in ARMS.items()]


FAMILIES = (protocol.Family(
    'Q7', 'Need the kernels be known in advance?',
    'No: they start random and training learns them. Expected: freezing conv1 at its random '
    'start, or both conv layers, lowers test accuracy against learning every layer.',
    tuple(protocol.Contrast(label, REFERENCE) for label in ARMS if label != REFERENCE),
    primary=('conv1 frozen at random init - all layers learned',)),)


def initial_params(cfg):
  """The parameters training started from (the same key split as loop.train_group)."""
  init_key, _ = jax.random.split(jax.random.key(cfg.seed))
  return LeNet5(cfg.model).init(init_key, jnp.zeros((1, *cfg.model.input_shape)))['params']


def extra(dataset):
  del dataset
  def moved(res):
    w0 = np.asarray(initial_params(res.config)['block1_conv1']['kernel'])
    w1 = np.asarray(res.params['block1_conv1']['kernel'])
    return {'conv1_moved': float(np.linalg.norm(w1 - w0) / np.linalg.norm(w0)),
            'conv1_unchanged': float(np.array_equal(w0, w1))}
  return moved


def _plots(ctx, res):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  before = np.asarray(initial_params(res.config)['block1_conv1']['kernel'])[:, :, 0, :]
  after = np.asarray(res.params['block1_conv1']['kernel'])[:, :, 0, :]
  channels = after.shape[-1]
  # One colour scale for all 12 kernels, so how far training moved them reads
  # off the colours; the bar gives the weights' values.
  limit = float(max(np.abs(before).max(), np.abs(after).max()))
  fig, axes = plt.subplots(2, channels, figsize=(1.4 * channels + 1.2, 3.2))
  for row, (title, kernels) in enumerate((('init', before), ('trained', after))):
    for c in range(channels):
      ax = axes[row, c]
      image = ax.imshow(kernels[:, :, c], cmap='RdBu_r', vmin=-limit, vmax=limit)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(f'{title} {c}', fontsize=7)
  fig.colorbar(image, ax=axes, shrink=0.9, label='weight')
  kernels_png = os.path.join(ctx.workdir, 'conv1_kernels.png')
  fig.savefig(kernels_png, dpi=120, bbox_inches='tight')
  plt.close(fig)

  images = ctx.dataset.test_images[:3].astype(np.float32) / 255
  # conv1's feature maps (conv + bias, before pooling and the activation)
  pads = arch.conv_pads(res.config.model.kernel_size[0], res.config.model.padding[0])
  maps = np.asarray(jax.lax.conv_general_dilated(
      images, res.params['block1_conv1']['kernel'], (1, 1), (pads, pads),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + res.params['block1_conv1']['bias'])
  fig, axes = plt.subplots(len(images), channels + 1,
                           figsize=(1.4 * (channels + 1) + 1.2, 4.4))
  low, high = float(maps.min()), float(maps.max())  # one scale for every map
  for i in range(len(images)):
    axes[i, 0].imshow(images[i, :, :, 0], cmap='gray', vmin=0, vmax=1)
    axes[i, 0].set_title('image', fontsize=7)
    for c in range(channels):
      image = axes[i, c + 1].imshow(maps[i, :, :, c], cmap='viridis', vmin=low, vmax=high)
      axes[i, c + 1].set_title(f'conv1 ch {c}', fontsize=7)
    for ax in axes[i]:
      ax.set_xticks([])
      ax.set_yticks([])
  fig.colorbar(image, ax=axes[:, 1:], shrink=0.9, label='conv1 output (before the activation)')
  maps_png = os.path.join(ctx.workdir, 'conv1_feature_maps.png')
  fig.savefig(maps_png, dpi=120, bbox_inches='tight')
  plt.close(fig)
  return os.path.basename(kernels_png), os.path.basename(maps_png)


def analyse(ctx):
  moved = ctx.by_arm('conv1_moved')[REFERENCE]
  unchanged = {label: ctx.by_arm('conv1_unchanged')[label] for label in ctx.selected
               if label != REFERENCE}
  kernels_png, maps_png = _plots(ctx, ctx.result(REFERENCE, 0))
  s = stats.summarise(moved)
  frozen = '; '.join(f'{label}: {int(sum(v))} of {len(v)} runs' for label, v in unchanged.items())
  outcomes = [o for o in ctx.outcomes if o.contrast.reference == REFERENCE]
  answer = f'''
Training moved the first layer's kernels by {s['mean']:.2f} +- {s['std'] if s['n'] > 1 else 0:.2f} of their initial norm
(||W_trained - W_init|| / ||W_init||, mean +- std over {s['n']} seeds at the selected rate). Runs
whose conv1 kernels stayed bitwise equal to their random start: {frozen or '-'}.

What learning the kernels is worth (frozen minus learned, test accuracy):

{ctx.lines(outcomes)}

**Answer.** Nobody chooses the kernels: they start as random numbers (top row of
the figure) and gradient descent moves them by the amount above (bottom row).
Against learning every layer, freezing conv1 at its random start is
{ctx.words('conv1 frozen at random init')}, and freezing both conv layers is
{ctx.words('both convs frozen at random init')} in test accuracy (Holm-corrected,
{ctx.margin_words()}).'''
  return [('First-layer kernels, before and after training (seed 0)',
           f'![{kernels_png}]({kernels_png})'),
          ('First-layer feature maps of three test images (conv output before the activation)',
           f'![{maps_png}]({maps_png})'),
          ('Answer', answer)]
