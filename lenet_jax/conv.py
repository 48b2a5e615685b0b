"""Convolution and pooling kernels that are fast on the CPU.

XLA's CPU convolution is slow inside a loop body (a `lax.scan` over an
epoch), and the gradient of `lax.reduce_window` max pooling lowers to
select-and-scatter, which is slow too. Both ops are rewritten here in terms of
slices, reshapes and one matrix multiply, which XLA's CPU backend runs well:

* `patches_conv` is a drop-in replacement for `lax.conv_general_dilated`
  (same signature, same function, same gradients up to float32 rounding) for
  the cases the model uses: NHWC inputs, HWIO kernels, stride 1, no dilation,
  one feature group, any padding.
* `window_pool` pools non-overlapping windows with a reshape and a reduction.

`conv_impl(name)` picks the implementation: 'native' (C++ kernels through
XLA's FFI, lenet_jax/native.py, the fastest on the CPU), 'patches' (here) or
'xla'; 'auto' is native on the CPU, patches on a GPU (measured faster for
stacked models, see resolve_impl) and XLA's convolution on a TPU. The
native kernels compute in float32 only, so with `precision='bfloat16'`
(ModelConfig.precision) 'auto' picks patches on the CPU, and 'native' is an
error.
"""
import functools

import jax
import jax.numpy as jnp
from absl import logging
from jax import lax

from lenet_jax import native
from lenet_jax.layout import CHWN, NHWC, check_supported, explicit_pads  # re-exported

CONV_IMPLS = ('auto', 'xla', 'patches', 'native')
def patches_conv(lhs, rhs, window_strides=(1, 1), padding='VALID',
                 lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                 feature_group_count=1, batch_group_count=1, precision=None,
                 preferred_element_type=None):
  """`lax.conv_general_dilated` as shifted slices, one concatenate and a matmul.

  The k*k shifted views of the padded input are stacked into im2col patches
  (in HWIO order), so the whole convolution is one matrix multiply. Two
  layouts are supported:
    NHWC: patches (N*Ho*Wo, k*k*Cin) @ kernel (k*k*Cin, Cout).
    CHWN (batch minor, the fast one on CPU): kernel^T (Cout, k*k*Cin) @
      patches (k*k*Cin, Ho*Wo*N); every shifted view is a run of whole rows of
      N contiguous values, so building the patches is a plain copy, and the
      output comes out in CHWN again.
  """
  layout = check_supported(lhs.shape, rhs.shape, window_strides, lhs_dilation,
                           rhs_dilation, dimension_numbers, feature_group_count,
                           batch_group_count)
  kh, kw, cin, cout = rhs.shape
  (top, bottom), (left, right) = explicit_pads(padding, (kh, kw))
  # Both layouts keep H and W on axes 1 and 2. lax.pad also takes negative
  # pads (cropping), as the convolution does.
  x = lax.pad(lhs, jnp.zeros((), lhs.dtype),
              ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))
  out_h, out_w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  views = [x[:, i:i + out_h, j:j + out_w, :] for i in range(kh) for j in range(kw)]
  dot = functools.partial(jnp.dot, precision=precision,
                          preferred_element_type=preferred_element_type)
  if layout == NHWC:
    batch = x.shape[0]
    patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
    y = dot(patches.reshape(batch * out_h * out_w, kh * kw * cin),
            rhs.reshape(kh * kw * cin, cout))
    return y.reshape(batch, out_h, out_w, cout)
  batch = x.shape[3]
  patches = jnp.stack(views).reshape(kh * kw * cin, out_h * out_w * batch)
  y = dot(rhs.reshape(kh * kw * cin, cout).T, patches)
  return y.reshape(cout, out_h, out_w, batch)


def resolve_impl(name: str, backend: str | None = None, precision: str = 'default') -> str:
  """The implementation `name` stands for on `backend` at `precision`: 'auto' resolved.

  The native kernels compute in float32, which is what 'default', 'float32'
  and 'tf32' mean on the CPU (it has no TF32), so they serve those; for
  'bfloat16' (bfloat16 inputs, float32 sums) 'auto' is 'patches' on the CPU,
  and an explicit 'native' raises ValueError.
  """
  if name not in CONV_IMPLS:
    raise ValueError(f'conv_impl={name!r} is not one of {CONV_IMPLS}.')
  if name == 'native' and precision == 'bfloat16':
    raise ValueError("conv_impl='native' computes in float32 only, so it cannot run "
                     "precision='bfloat16'; use conv_impl='patches' or 'xla', or 'auto' "
                     '(patches on the CPU).')
  if name == 'auto':
    backend = backend or jax.default_backend()
    # On a GPU the engine stacks many models per program, and vmapped lax.conv
    # becomes a grouped convolution, slow there for few channels: on one H200
    # (2026-12-04, bench.throughput, default precision) patches trained 64
    # stacked models at 2.99M img/s against 1.70M, and one model at 978k
    # against 998k (docs/benchmark.md). No TPU was measured: XLA's there.
    name = 'patches' if backend == 'gpu' else 'xla'
    if backend == 'cpu':
      if precision == 'bfloat16':
        name = 'patches'
      else:
        name = 'native' if _native_reason() is None else 'patches'
  return name


def conv_impl(name: str, backend: str | None = None, precision: str = 'default'):
  """Returns the conv_general_dilated to use for `name` on `backend` at `precision`.

  'auto' is the patches convolution on a GPU, XLA's on a TPU; on the CPU it is the native kernels,
  or, where they cannot be built (no C++ compiler) or for precision='bfloat16',
  the patches convolution (with a warning that says why, for the compiler).
  """
  name = resolve_impl(name, backend, precision)
  if name == 'native':
    return native.native_conv
  return patches_conv if name == 'patches' else lax.conv_general_dilated


def is_batch_minor(conv_fn) -> bool:
  """Whether `conv_fn` runs fastest in the CHWN layout (the CPU implementations)."""
  return conv_fn in (patches_conv, native.native_conv)


@functools.cache
def _native_reason() -> str | None:
  reason = native.available()
  if reason is not None:
    logging.warning('conv_impl=auto: the native convolution is unavailable (%s); '
                    'using conv_impl=patches, which is slower.', reason)
  return reason


def window_pool(x, window: int, kind: str):
  """Max or average pooling over non-overlapping window x window tiles.

  H and W are axes 1 and 2 (NHWC or CHWN). Like 'VALID' pooling with
  stride == window, rows and columns that do not fill a whole window are dropped.
  Where a window holds several equal maxima, the gradient is split evenly
  between them (jnp.max's rule), whereas XLA's reduce_window gives it all to
  the first; both are subgradients. Giving it to the first with a custom VJP
  measured 25% slower training here, so the split stays. A window holding NaN
  pools to NaN.
  """
  lead, height, width, last = x.shape
  out_h, out_w = height // window, width // window
  x = x[:, :out_h * window, :out_w * window, :]
  x = x.reshape(lead, out_h, window, out_w, window, last)
  if kind == 'max':
    # XLA's CPU max reduction returns a number where a window holds NaN for
    # most shapes, which would hide a diverging run; NaN is put back explicitly.
    return jnp.where(jnp.isnan(x).any(axis=(2, 4)), jnp.nan, x.max(axis=(2, 4)))
  if kind == 'avg':
    return x.mean(axis=(2, 4))
  raise ValueError(f'pool={kind!r} is not one of max, avg.')
