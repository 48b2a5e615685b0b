"""LeNet-5 in Flax linen; every architectural choice is a field of its ModelConfig.

`LeNet5()` is exactly the note's network (61,706 parameters). Module names in
the parameter tree match the layer names of `arch.trace`, which is how tests
hold the analytic counts against the real tree.

`ModelConfig.precision` sets how the convolutions and dense layers compute
(`precision_arg` says what each value passes); the parameters, the
activations between layers, the loss and the softmax stay float32 in every
case, and 'default' passes nothing, so its program is the one from before
the field existed.
"""
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lenet_jax import arch
from lenet_jax import config as config_lib
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


def _has_tf32(backend: str | None = None) -> bool:
  """Whether the default device is an NVIDIA GPU with TF32 tensor cores (Ampere, 8.0, on)."""
  if (backend or jax.default_backend()) != 'gpu':
    return False
  capability = getattr(jax.devices()[0], 'compute_capability', None)
  try:
    return float(capability) >= 8.0
  except (TypeError, ValueError):  # ROCm devices report none
    return False


def precision_used(precision: str, backend: str | None = None) -> str:
  """What `precision` computes on this device, for a run's record: 'tf32' is
  float32 where the device has no TF32 (the CPU, say); the rest as named."""
  return 'float32' if precision == 'tf32' and not _has_tf32(backend) else precision


def precision_arg(precision: str, op: str, backend: str | None = None) -> Any:
  """The `precision` argument a dot (op='dot') or a `lax` convolution (op='conv') gets.

  None means none is passed:
    'default'  None: the backend's own choice (float32 on the CPU; TF32 tensor
               cores for float32 on Ampere and later NVIDIA GPUs; bfloat16
               passes on a TPU). The program is exactly the one from before
               the field existed.
    'float32'  Precision.HIGHEST: full float32, also on GPUs that would use TF32.
    'tf32'     TF32 where the hardware has it. On such a GPU a dot names the
               algorithm (DotAlgorithmPreset.TF32_TF32_F32, so XLA cannot pick
               bfloat16 passes for it) and a convolution gets Precision.HIGH,
               with which cuDNN may use TF32 (a convolution takes no algorithm).
               Elsewhere Precision.HIGH, what jax.default_matmul_precision
               ('tensorfloat32') gives: float32 on the CPU (it has no TF32, and
               XLA's CPU dot rejects the TF32 algorithm), 3 bfloat16 passes on a TPU.
    'bfloat16' None: the op multiplies bfloat16 copies of its inputs instead,
               forward and backward, the forward sums in float32
               (`preferred_element_type`; see mixed_bfloat16).
  """
  if precision in ('default', 'bfloat16'):
    return None
  if precision == 'float32':
    return lax.Precision.HIGHEST
  if precision == 'tf32':
    if op == 'dot' and _has_tf32(backend):
      return lax.DotAlgorithmPreset.TF32_TF32_F32
    return lax.Precision.HIGH
  raise ValueError(f'model.precision={precision!r} is not one of {config_lib.PRECISIONS}.')


def mixed_bfloat16(op: Callable, lhs, rhs):
  """`op(lhs, rhs)`, a bilinear op (a convolution, a dot), on bfloat16 copies of its inputs.

  Forward: op(lhs, rhs, preferred_element_type=float32) on the bfloat16
  copies, so the products are summed and returned in float32. Backward: the
  transposed products take bfloat16 copies of the cotangent too, as in
  mixed-precision training, and the gradients come back (rounded to
  bfloat16) in the inputs' dtype. Left to itself, JAX would raise the
  bfloat16 operand to the float32 cotangent's dtype and run the whole
  backward pass in float32.
  """
  lhs_dtype, rhs_dtype = lhs.dtype, rhs.dtype

  def forward(l, r):
    return op(l.astype(jnp.bfloat16), r.astype(jnp.bfloat16),
              preferred_element_type=jnp.float32)

  def fwd(l, r):
    l, r = l.astype(jnp.bfloat16), r.astype(jnp.bfloat16)
    return op(l, r, preferred_element_type=jnp.float32), (l, r)

  def bwd(residuals, g):
    _, vjp = jax.vjp(op, *residuals)  # bfloat16 in and out: bfloat16 products
    dl, dr = vjp(g.astype(jnp.bfloat16))
    return dl.astype(lhs_dtype), dr.astype(rhs_dtype)

  f = jax.custom_vjp(forward)
  f.defvjp(fwd, bwd)
  return f(lhs, rhs)


def bfloat16_dot_general(lhs, rhs, dimension_numbers, precision=None,
                         preferred_element_type=None, **kwargs):
  """`lax.dot_general` in mixed precision (see mixed_bfloat16); returns float32."""
  del preferred_element_type  # always float32
  op = functools.partial(lax.dot_general, dimension_numbers=dimension_numbers,
                         precision=precision, **kwargs)
  return mixed_bfloat16(op, lhs, rhs)


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
  # The conv_fn's `precision` argument (None: none passed, see precision_arg),
  # and whether it multiplies bfloat16 copies of its inputs, forward and
  # backward (mixed_bfloat16). The parameters stay float32.
  precision: Any = None
  bfloat16: bool = False

  @nn.compact
  def __call__(self, x):
    k, channel_axis = self.kernel_size, self.layout.index('C')
    kernel = self.param('kernel', self.kernel_init,
                        (k, k, x.shape[channel_axis], self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    kernel, window = kernel.astype(x.dtype), self.max_pool_window
    options = {} if self.precision is None else {'precision': self.precision}
    if window and _native_max_pool(self.conv_fn, 'max', window):
      # float32 throughout (conv.resolve_impl keeps bfloat16 off the native kernels)
      y = native.conv_max_pool(x, kernel, (self.pads, self.pads), window)  # CHWN
    else:
      conv_fn = functools.partial(self.conv_fn, window_strides=(1, 1),
                                  padding=(self.pads, self.pads),
                                  dimension_numbers=(self.layout, 'HWIO', self.layout),
                                  **options)
      y = mixed_bfloat16(conv_fn, x, kernel) if self.bfloat16 else conv_fn(x, kernel)
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
  `config.precision` sets how the convolutions and dense layers compute (see
  `precision_arg`); with 'bfloat16' the CPU's 'auto' convolution is
  'patches', as the native kernels run float32 only (conv.resolve_impl).
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
    conv_fn = conv.conv_impl(cfg.conv_impl, precision=cfg.precision)
    # Both empty for 'default': nothing is passed, the program is unchanged.
    conv_options, dense_options = {}, {}
    if cfg.precision == 'bfloat16':
      conv_options = {'bfloat16': True}
      dense_options = {'dot_general': bfloat16_dot_general}
    elif cfg.precision != 'default':
      op = 'conv' if conv_fn is lax.conv_general_dilated else 'dot'  # patches: a dot
      conv_options = {'precision': precision_arg(cfg.precision, op)}
      dense_options = {'precision': precision_arg(cfg.precision, 'dot')}
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
                       max_pool_window=cfg.pool_size, name=arch.conv_name(b, c),
                       **conv_options)(x))
          continue
        x = Conv(features, kernel, pads, conv_init, conv_fn, layout,
                 stride=arch.conv_stride(cfg, last), name=arch.conv_name(b, c),
                 **conv_options)(x)
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
      x = act(nn.Dense(width, kernel_init=kernel_init, name=f'dense{i}', **dense_options)(x))
    return nn.Dense(cfg.num_classes, kernel_init=kernel_init, name='logits',
                    **dense_options)(x)
