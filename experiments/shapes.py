"""Questions 1 and 3: why height and width shrink while channels grow, and how the
conv output is wired into the first dense layer.

No training: the shape traces come from `lenet_jax.arch` (held against the real
parameter trees by the tests), and the errors are the ones the code raises.
Full mode:
  python -m experiments shapes

Expected runtime: 0.1 minutes on 2 CPU cores
(experiments/results/shapes/report.md:157).

Result (experiments/results/shapes/report.md:135-149; README.md:120,122): height and
width shrink only where an unpadded conv loses k - 1 pixels and where 2x2 pooling
halves them, and depth grows only because the designer asks for more kernels; the
flatten feeds 16 x 5 x 5 = 400 inputs to the first dense layer, whose 48,120
parameters are 78% of the network.
"""
import dataclasses

import jax
import jax.numpy as jnp

from experiments import writeup
from lenet_jax import arch
from lenet_jax.config import ModelConfig
from lenet_jax.model import LeNet5, pool

NAME = 'shapes'
TITLE = 'Shapes: why the maps shrink and thicken, and what the flatten feeds'
QUESTION = ('Why does repeated convolution make the image smaller in height and width '
            'but thicker (question 1)? How does the conv output correspond to the '
            'number of inputs of the first fully connected layer (question 3)? What '
            'breaks when the input size changes?')
METHOD = ('Analytic shape traces (output size, parameters, multiply-adds, receptive '
          'field per layer) of the note\'s network and of variants that remove one '
          'cause of shrinking at a time; the errors are produced by running the code.')
TRAINS = False

NOTE = ModelConfig(activation='sigmoid')
VARIANTS = {
    "the note's network (pad 2, then valid; max pool)": NOTE,
    "all 'same' padding (only pooling shrinks)": dataclasses.replace(NOTE, padding=('same',)),
    'no pooling (only the valid conv shrinks)': dataclasses.replace(NOTE, pool='none'),
    "no padding at all ('valid' twice)": dataclasses.replace(NOTE, padding=('valid',)),
    'CIFAR-10 input, 32x32x3': dataclasses.replace(NOTE, input_shape=(32, 32, 3)),
}


def arms(quick):
  del quick
  return []


def _values_per_layer(cfg: ModelConfig) -> str:
  """H x W x C = values per example after each conv and pool layer."""
  return ' -> '.join(f'{l.out_shape[0] * l.out_shape[1] * l.out_shape[2]:,}'
                     for l in arch.trace(cfg) if l.kind in ('conv', 'pool'))


def _pooled_single_pixel(kind: str) -> str:
  """2x2 pooling of a 1x4 strip of one map holding one lit pixel, at columns 0, 1, 2."""
  outs = []
  for col in range(3):
    x = jnp.zeros((1, 2, 4, 1)).at[0, 0, col, 0].set(1.0)  # NHWC, one channel
    y = pool(x, kind, 2, conv_fn=None)
    outs.append(f'column {col} -> [' + ', '.join(f'{v:g}' for v in y[0, 0, :, 0].tolist()) + ']')
  return '; '.join(outs)


def _reasons() -> str:
  """Why designers shrink the maps and grow the channels: receptive field, compute,
  values per layer, and what pooling does to one map."""
  no_pool = dataclasses.replace(NOTE, pool='none')
  narrow = dataclasses.replace(NOTE, channels=(6, 6))
  rf = lambda cfg: [l for l in arch.trace(cfg) if l.kind in ('conv', 'pool')][-1].receptive_field
  mflops = lambda cfg: arch.totals(cfg)['flops'] / 1e6
  flat = lambda cfg: next(l for l in arch.trace(cfg) if l.kind == 'flatten').out_shape[0]
  return f'''
The arithmetic above is how; the reasons a designer wants it are these, each
computed here from the same traces:

- **Receptive field.** Pooling doubles the spacing between the inputs of the
  next layer, so block 2's 5x5 kernels see {rf(NOTE)}x{rf(NOTE)} input pixels after
  pooling and only {rf(no_pool)}x{rf(no_pool)} without it: downsampling lets the same small
  kernels take in larger parts of the digit or garment.
- **Compute.** Every conv after a pool runs on a quarter of the positions:
  the note's network costs {mflops(NOTE):.2f} MFLOPs per image, the same layers without
  pooling {mflops(no_pool):.2f}, and the first dense layer grows from
  {flat(NOTE):,} to {flat(no_pool):,} inputs (the table below).
- **Values per layer (H x W x C after each conv and pool).** 6 -> 16:
  {_values_per_layer(NOTE)}; 6 -> 6: {_values_per_layer(narrow)}. Each
  pooling divides a layer's values by four; growing the channels keeps the
  representation from collapsing as resolution drops, so the later layers can
  still encode many feature types per position. Whether that buys accuracy is
  measured in the channel-growth experiment.
- **Tolerance to small shifts.** Within a pooling window the position of a
  feature is forgotten. One map holding a single lit pixel, 2x2 max pooling:
  {_pooled_single_pixel('max')}; average pooling: {_pooled_single_pixel('avg')}.
  A one-pixel move inside a window (column 0 -> 1) leaves the output unchanged;
  one across a window boundary (1 -> 2) moves it. So pooling absorbs some small
  shifts, not all; the claims experiment measures how much accuracy and how
  much feature similarity that buys on shifted test images.

**"Pooling refines each feature map"** is not what pooling does. It has no
parameters and treats each channel on its own: every output is the max (or the
mean) of a 2x2 window of one map, so it keeps one value per four positions and
discards where in the window the feature was. It coarsens a map; it does not
sharpen, denoise or recombine it (mixing channels is the next conv's job). The
claims experiment compares max, average and a learned stride-2 convolution in
its place.'''


def _trace_block(cfg: ModelConfig) -> str:
  return '```\n' + arch.describe(cfg) + '\n```'


def _error(fn) -> str:
  try:
    fn()
  except Exception as e:  # pylint: disable=broad-except
    return f'{type(e).__name__}: {e}'.split('\n')[0]
  raise AssertionError('expected an error')


def analyse(ctx):
  del ctx
  sections = []
  note = arch.trace(NOTE)
  sizes = {l.name: l.out_shape for l in note}
  conv2 = next(l for l in note if l.name == 'block2_conv1')
  dense1 = next(l for l in note if l.name == 'dense1')
  sections.append(("The note's network", _trace_block(NOTE) + f'''

Height and width change in exactly three places, all given by
`out = in + pad_low + pad_high - k + 1` for a stride-1 convolution and
`out = floor(in / 2)` for 2x2 pooling with stride 2:

- block 1 conv: 28 + 2 + 2 - 5 + 1 = 28 (padding 2 on each side keeps the size);
- block 1 pool: 28 / 2 = 14;
- block 2 conv: 14 + 0 + 0 - 5 + 1 = 10 (no padding: a 5x5 window fits 10 times across 14);
- block 2 pool: 10 / 2 = 5.

Depth changes only where a conv layer says so: the number of output channels is
the number of kernels, a free choice (6, then 16), not a consequence of the
arithmetic. So the maps "get smaller and thicker" because **unpadded
convolutions and pooling shrink them** and **the designer asks for more kernels
in later layers**. The receptive field grows meanwhile ({note[-1].receptive_field}x{note[-1].receptive_field} input
pixels per block-2 output), so each of the 16 later channels summarises a
larger patch.'''))
  sections.append(('Why shrink the maps and grow the channels', _reasons()))
  rows = []
  for label, cfg in VARIANTS.items():
    t = arch.trace(cfg)
    flat = next(l for l in t if l.kind == 'flatten').out_shape[0]
    final = [l for l in t if l.kind in ('conv', 'pool')][-1].out_shape
    d1 = next(l for l in t if l.name == 'dense1')
    rows.append([label, 'x'.join(map(str, final)), f'{flat:,}', f'{d1.params:,}',
                 f"{arch.totals(cfg)['params']:,}", f"{arch.totals(cfg)['flops'] / 1e6:.2f}"])
  sections.append(('Which step shrinks what', writeup.markdown_table(
      ['variant', 'last conv-block output HxWxC', 'flatten size', 'dense1 params',
       'total params', 'MFLOPs/img'], rows) + '''

Removing the padding or the pooling changes the flatten size, and with it the
first dense layer, which holds most of the parameters. With 'same' padding
everywhere only pooling shrinks (28 -> 14 -> 7).'''))
  sections.append(('From conv output to the first dense layer', f'''
The flatten layer lays each example's final feature maps out as one vector of
channels x height x width = {sizes['block2_maxpool'][2]} x {sizes['block2_maxpool'][0]} x {sizes['block2_maxpool'][1]} = {sizes['flatten'][0]}
numbers (this code flattens in height, width, channel order; PyTorch in
channel, height, width order: the same numbers permuted). Every one of the 120
neurons of the first dense layer has one weight per flattened number, so that
layer has {sizes['flatten'][0]} x 120 + 120 = {dense1.params:,} parameters,
{100 * dense1.params / arch.totals(NOTE)['params']:.0f}% of the network's {arch.totals(NOTE)['params']:,}. The conv layers
have {note[0].params + conv2.params:,} between them. Nothing in the convolution
"corresponds" to a dense neuron: the correspondence is the flatten, and the
dense layer's input size is fixed by the conv stack's output shape.'''))
  cifar = dataclasses.replace(NOTE, input_shape=(32, 32, 3))
  x32 = jnp.zeros((1, 32, 32, 3))
  params28 = LeNet5(NOTE).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  wrong_input = _error(lambda: LeNet5(NOTE).apply(params28, x32))
  wrong_params = _error(lambda: LeNet5(cifar).apply(params28, x32))
  impossible = _error(lambda: arch.trace(dataclasses.replace(
      NOTE, channels=(6, 16, 32), padding=('valid',))))
  t32 = arch.trace(cifar)
  sections.append(('What breaks when the input size changes', _trace_block(cifar) + f'''

On 32x32x3 (CIFAR-10) images the same layers give {t32[-4].out_shape[0]} flattened
values instead of 400, so the first dense layer must have
{t32[-3].params:,} parameters instead of {dense1.params:,}: a model built for
28x28 cannot take 32x32 images. The errors a user gets:

- 32x32 images into a model configured for 28x28: `{wrong_input}`
- the 28x28 model's parameters loaded into the 32x32 model (only the dense
  layer and the 3-channel first conv disagree): `{wrong_params[:300]}`
- an architecture whose maps vanish (three 5x5 'valid' blocks on 28x28): `{impossible}`

`run.py` sets `input_shape` from the dataset, so `--dataset=cifar10` builds the
right network; impossible shapes fail before anything is compiled.'''))
  sections.append(('Answer', '''
(1) Height and width shrink because unpadded ("valid") convolutions lose k - 1
pixels per layer and 2x2 pooling halves them; with 'same' padding and no
pooling they would not shrink at all. Depth grows only because the designer
gives later layers more kernels (6, then 16); nothing in the convolution forces
it (see the channel-growth experiment for whether it helps). Designers want
both: downsampling widens what each later kernel sees, cuts the compute and the
dense layer, and absorbs shifts within a pooling window; more channels keep the
number of values per layer from falling with the resolution. Pooling coarsens
each map; it does not refine it.
(3) The first dense layer sees the flattened final maps, channels x height x
width = 16 x 5 x 5 = 400 inputs per example, so its weight matrix is 400 x 120.
Change the input size, the padding, the pooling or the last channel count and
that 400, and the dense layer with it, changes.'''))
  return sections
