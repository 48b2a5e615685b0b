"""LeNet-5 in Flax linen; every architectural choice is a field of its ModelConfig.

`LeNet5()` is exactly the note's network (61,706 parameters). Module names in
the parameter tree match the layer names of `arch.trace`, which is how tests
hold the analytic counts against the real tree.
"""
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lenet_jax import arch
from lenet_jax import conv
from lenet_jax import native
from lenet_jax import validation
from lenet_jax.config import ModelConfig

ACTIVATION_FNS = {'sigmoid': nn.sigmoid, 'tanh': jnp.tanh, 'relu': nn.relu,
                  'gelu': nn.gelu, 'silu': nn.silu}

# Non-decreasing activations, which commute with max pooling.
MONOTONE = ('sigmoid', 'tanh', 'relu')

KERNEL_INITS = {
    'lecun': nn.initializers.lecun_normal(),  # Flax's default
    'xavier': nn.initializers.xavier_uniform(),  # d2l's recipe
    'he': nn.initializers.he_normal(),
    # PyTorch's default weight init, kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))
    'torch': nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
}


def _native_max_pool(conv_fn, kind: str, size: int) -> bool:
  """Whether this max pooling runs in the native kernels (alongside the native conv)."""
  return conv_fn is native.native_conv and kind == 'max' and size <= native.MAX_POOL_WINDOW


def pool(x, kind: str, size: int, conv_fn):
  """size x size pooling with stride size, in the layout that `conv_fn` implies."""
  if _native_max_pool(conv_fn, kind, size):
    return native.max_pool(x, size)  # CHWN: the channels are independent problems
  if conv.is_batch_minor(conv_fn):
    # reshape-and-reduce: its gradient avoids select-and-scatter
    return conv.window_pool(x, size, kind)
  if kind == 'avg':
    return nn.avg_pool(x, (size, size), strides=(size, size))
  window = dict(window_shape=(size, size), strides=(size, size))
  # XLA's CPU max reduction drops NaN for most shapes; put it back, so a
  # diverging run shows as one.
  has_nan = nn.max_pool(jnp.isnan(x).astype(x.dtype), **window) > 0
  return jnp.where(has_nan, jnp.nan, nn.max_pool(x, **window))


class Conv(nn.Module):
  """A convolution with nn.Conv's parameters ('kernel' HWIO, 'bias') in any layout."""
  features: int
  kernel_size: int
  pads: tuple[int, int]
  kernel_init: Callable
  conv_fn: Callable = jax.lax.conv_general_dilated
  layout: str = 'NHWC'  # or 'CHWN'
  # The native and patches convolutions run stride 1 only, so a stride s is
  # the stride-1 convolution subsampled [::s, ::s]: output (i, j) of a strided
  # convolution with the same padding is the stride-1 output (s*i, s*j), so
  # the values are the same, ceil(size / s) per side. H and W are axes 1 and
  # 2 in both layouts.
  stride: int = 1
  # > 0: max-pool the convolution with this window before adding the bias.
  # A per-channel bias commutes with max pooling, max(x + b) = max(x) + b, so
  # it touches a quarter of the values; the native path fuses conv and pool
  # and never stores the full-size convolution.
  max_pool_window: int = 0

  @nn.compact
  def __call__(self, x):
    k, channel_axis = self.kernel_size, self.layout.index('C')
    kernel = self.param('kernel', self.kernel_init,
                        (k, k, x.shape[channel_axis], self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    kernel, window = kernel.astype(x.dtype), self.max_pool_window
    if window and _native_max_pool(self.conv_fn, 'max', window):
      y = native.conv_max_pool(x, kernel, (self.pads, self.pads), window)  # CHWN
    else:
      y = self.conv_fn(x, kernel, window_strides=(1, 1), padding=(self.pads, self.pads),
                       dimension_numbers=(self.layout, 'HWIO', self.layout))
      if window:
        y = pool(y, 'max', window, self.conv_fn)
    if self.stride > 1:
      y = y[:, ::self.stride, ::self.stride, :]
    return y + bias.reshape([-1 if a == channel_axis else 1 for a in range(4)])


class LeNet5(nn.Module):
  """Conv blocks (conv [-> batch norm] -> activation, repeated; pool), then dense layers.

  With the CPU convolutions (native, the CPU default, and patches) the conv
  blocks run in the batch-minor CHWN layout, where the kernels vectorise over
  the batch; the function and the parameters are the same in either layout.
  `features` returns the first dense layer's input (the flattened or
  averaged maps):

      LeNet5(cfg).apply(variables, x, method=LeNet5.features)
  """
  config: ModelConfig = ModelConfig()

  def features(self, x_BxHxWxC, train: bool = False):
    """The input of the first dense layer, (batch, features)."""
    return self(x_BxHxWxC, train, features_only=True)

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = False, *, features_only: bool = False):
    cfg = self.config
    validation.check_model(cfg)  # the same rules as the command line's
    if tuple(x_BxHxWxC.shape[1:]) != tuple(cfg.input_shape):
      raise ValueError(f'input images are {x_BxHxWxC.shape[1:]} but the model was '
                       f'configured for input_shape={cfg.input_shape}; set '
                       'ModelConfig.input_shape to the data (run.py does this).')
    act = ACTIVATION_FNS[cfg.activation]
    kernel_init = KERNEL_INITS[cfg.init]
    conv_init = kernel_init
    if cfg.conv_init_scale != 1:
      conv_init = lambda *args: cfg.conv_init_scale * kernel_init(*args)
    conv_fn = conv.conv_impl(cfg.conv_impl)
    layout = 'CHWN' if conv.is_batch_minor(conv_fn) else 'NHWC'
    channel_axis = layout.index('C')
    x = x_BxHxWxC.transpose(3, 1, 2, 0) if layout == 'CHWN' else x_BxHxWxC
    for b, (features, kernel, padding, convs) in enumerate(cfg.blocks(), start=1):
      pads = arch.conv_pads(kernel, padding)
      for c in range(1, convs + 1):
        last = c == convs
        # max(act(x)) == act(max(x)) for a non-decreasing act: pool first,
        # and the activation touches a quarter of the values.
        pool_first = last and cfg.pool == 'max' and cfg.activation in MONOTONE
        if pool_first and cfg.normalization == 'none' and cfg.conv_reduction == 'sum':
          x = act(Conv(features, kernel, pads, conv_init, conv_fn, layout,
                       max_pool_window=cfg.pool_size, name=arch.conv_name(b, c))(x))
          continue
        x = Conv(features, kernel, pads, conv_init, conv_fn, layout,
                 stride=arch.conv_stride(cfg, last), name=arch.conv_name(b, c))(x)
        if cfg.conv_reduction == 'mean':
          # The note's "sum, then average": a fixed 1/k^2 rescaling of the sum.
          x = x / (kernel * kernel)
        if cfg.normalization == 'batch':
          x = nn.BatchNorm(use_running_average=not train, momentum=0.9, axis=channel_axis,
                           name=f'block{b}_bn{c}')(x)
        if pool_first:
          x = act(pool(x, cfg.pool, cfg.pool_size, conv_fn))
        elif last or cfg.inner_activation:  # False: stacked convs compose linearly
          x = act(x)
          if last and cfg.pool not in ('none', 'stride'):
            x = pool(x, cfg.pool, cfg.pool_size, conv_fn)
    if cfg.head == 'gap':
      x = x.mean(axis=(1, 2))  # H and W are axes 1 and 2 in both layouts
      x = x.T if layout == 'CHWN' else x
    else:
      if layout == 'CHWN':
        x = x.transpose(3, 1, 2, 0)  # flatten in (H, W, C) order, as in NHWC
      x = x.reshape(x.shape[0], -1)
    if features_only:
      return x
    for i, width in enumerate(cfg.dense, start=1):
      x = act(nn.Dense(width, kernel_init=kernel_init, name=f'dense{i}')(x))
    return nn.Dense(cfg.num_classes, kernel_init=kernel_init, name='logits')(x)
