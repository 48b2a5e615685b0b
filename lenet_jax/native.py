"""A native CPU convolution: direct C++ kernels called through XLA's FFI.

`native_conv` is a drop-in for `lax.conv_general_dilated` (stride 1, no
dilation, one feature group, any padding, float32), like
`conv.patches_conv`, but it never builds im2col patches: the kernels in
csrc/conv.cc vectorise over the batch of the CHWN layout and keep their sums
in registers. Its gradient is a `jax.custom_vjp` whose input gradient is the
same forward kernel run on the flipped kernel, and whose weight gradient is a
second kernel. `max_pool` pools non-overlapping windows, with the gradient
going to each window's first maximum as XLA's does, and `conv_max_pool` is
the two in one pass that never stores the full-size convolution (the model
uses it wherever a conv is followed by max pooling). Every handler takes any
leading axes as independent problems, so `jax.vmap` over models becomes one
call.

The library is compiled with the system's C++ compiler on first use (a few
seconds, `-march=native`), into a cache directory keyed by the source, the
compiler flags, the jaxlib version and the CPU, and loaded from there
afterwards. `install.sh` builds it ahead of time and checks it against XLA
(`native.main()`).
"""
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lenet_jax import layout as layout_lib

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'conv.cc')
# -w: XLA's FFI headers warn under GCC 12; the kernels' own code is clean.
CXX_FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-w')
MAX_POOL_WINDOW = 15  # the winning tap, i * k + j < 15 * 15, is stored in one byte
TARGETS = {'lenet_conv_forward': 'LenetConvForward',
           'lenet_conv_weight_grad': 'LenetConvWeightGrad',
           'lenet_max_pool_forward': 'LenetMaxPoolForward',
           'lenet_max_pool_backward': 'LenetMaxPoolBackward',
           'lenet_conv_max_pool_forward': 'LenetConvMaxPoolForward'}


class NativeUnavailable(RuntimeError):
  """The native library could not be built or loaded on this machine."""


def cache_dir() -> str:
  """$LENET_JAX_NATIVE_DIR, else ~/.cache/lenet_jax/native."""
  return os.environ.get('LENET_JAX_NATIVE_DIR') or os.path.join(
      os.path.expanduser('~'), '.cache', 'lenet_jax', 'native')


def _cpu_signature() -> str:
  """The CPU model and flags: -march=native code must not move to another CPU."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      lines = [l for l in f if l.startswith(('model name', 'flags'))]
    return ''.join(sorted(set(lines)))
  except OSError:
    return platform.processor() + platform.machine()


def library_path() -> str:
  import jaxlib  # pylint: disable=import-outside-toplevel
  with open(SOURCE, 'rb') as f:
    key = hashlib.sha256(f.read())
  key.update(' '.join(CXX_FLAGS).encode())
  key.update(jaxlib.__version__.encode())
  key.update(_cpu_signature().encode())
  return os.path.join(cache_dir(), f'conv-{key.hexdigest()[:16]}.so')


def build(path: str | None = None) -> str:
  """Compiles csrc/conv.cc into `path` (atomically) and returns it."""
  path = path or library_path()
  cxx = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
  if cxx is None or shutil.which(cxx) is None:
    raise NativeUnavailable(
        f'conv_impl="native" needs a C++17 compiler and none was found (CXX={cxx!r}; '
        'looked for $CXX, g++ and c++ on PATH). Install one (Debian: apt-get install '
        'g++) or use conv_impl="patches".')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(path))
  os.close(fd)
  cmd = [cxx, *CXX_FLAGS, f'-I{jax.ffi.include_dir()}', SOURCE, '-o', tmp]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    os.unlink(tmp)
    raise NativeUnavailable(f'building the native convolution failed:\n  {" ".join(cmd)}\n'
                            f'{proc.stderr[-3000:]}\nUse conv_impl="patches" meanwhile.')
  os.replace(tmp, path)  # atomic: concurrent builders (shards) never see half a file
  return path


@functools.cache
def load() -> ctypes.CDLL:
  """Builds the library if needed, loads it and registers its FFI targets (once)."""
  path = library_path()
  if not os.path.exists(path):
    build(path)
  try:
    lib = ctypes.CDLL(path)
  except OSError as e:
    raise NativeUnavailable(f'could not load the native library {path} ({e}); delete it '
                            'and it is rebuilt on the next use.') from e
  for target, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                platform='cpu')
  return lib


@functools.cache
def available() -> str | None:
  """None if the native convolution works here, else why not."""
  if jax.default_backend() != 'cpu':
    return f'it runs on the CPU only, and the default backend is {jax.default_backend()}'
  try:
    load()
  except NativeUnavailable as e:
    return str(e)
  return None


def _require():
  reason = available()
  if reason is not None:
    raise NativeUnavailable(f'conv_impl="native" is unavailable: {reason}')


def _forward(x, w, pads):
  """x (..., Ci, H, W, N), w (..., kh, kw, Ci, Co) -> (..., Co, Ho, Wo, N)."""
  (top, _), (left, _) = pads
  out = jax.ShapeDtypeStruct(_conv_shape(x.shape, w.shape, pads), x.dtype)
  return jax.ffi.ffi_call('lenet_conv_forward', out, vmap_method='broadcast_all')(
      x, w, pad_top=np.int64(top), pad_left=np.int64(left))


def _weight_grad(x, dy, pads, kernel_hw):
  """x (..., Ci, H, W, N), dy (..., Co, Ho, Wo, N) -> dw (..., kh, kw, Ci, Co)."""
  (top, _), (left, _) = pads
  *lead, cin = x.shape[:-3]
  out = jax.ShapeDtypeStruct((*lead, *kernel_hw, cin, dy.shape[-4]), x.dtype)
  return jax.ffi.ffi_call('lenet_conv_weight_grad', out, vmap_method='broadcast_all')(
      x, dy, pad_top=np.int64(top), pad_left=np.int64(left))


FORWARD_MODE = ("conv_impl='native' has no forward-mode derivative (jax.jvp, jax.jacfwd, "
                'jax.hessian): its gradient is a reverse-mode rule of its own. '
                "Build the model with conv_impl='xla' (or 'patches'), e.g. "
                "LeNet5(ModelConfig(conv_impl='xla')) or --conv_impl=xla; it computes the same "
                'function and has both modes.')


def _reverse_mode_only(fn):
  """`fn` (a custom_vjp function) with JAX's bare forward-mode error replaced by
  one that names the convolution that supports forward mode."""
  @functools.wraps(fn)
  def wrapped(*args):
    try:
      return fn(*args)
    except TypeError as e:
      if 'forward-mode' not in str(e):
        raise
      raise TypeError(FORWARD_MODE) from None
  return wrapped


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_chwn(x, w, pads):
  """The convolution of CHWN `x` with HWIO `w`, pads ((top, bottom), (left, right))."""
  return _forward(x, w, pads)


def _conv_fwd(x, w, pads):
  return _forward(x, w, pads), (x, w)


def _conv_bwd(pads, residuals, dy):
  x, w = residuals
  kh, kw = w.shape[-4:-2]
  (top, bottom), (left, right) = pads
  # The input gradient is a full convolution of dy with the kernel flipped in
  # space and with its channel axes swapped; these pads give back H and W.
  flipped = jnp.flip(w, axis=(-4, -3)).swapaxes(-2, -1)
  dx_pads = ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right))
  return _forward(dy, flipped, dx_pads), _weight_grad(x, dy, pads, (kh, kw))


_conv_chwn.defvjp(_conv_fwd, _conv_bwd)
conv_chwn = _reverse_mode_only(_conv_chwn)


def max_pool(x, window: int):
  """Max pooling of (..., H, W, N) over non-overlapping window x window tiles.

  Like 'VALID' pooling with stride == window (a remainder is dropped), and its
  gradient goes to the first maximum of each window in row-major order, as
  with XLA's reduce_window, so it is the same function and gradient as
  `nn.max_pool`. Leading axes (channels, vmapped models) are independent.
  """
  if x.dtype != jnp.float32:
    raise NotImplementedError(f'native max_pool computes in float32, not {x.dtype}.')
  if not 1 <= window <= MAX_POOL_WINDOW:
    raise ValueError(f'native max_pool takes windows of 1..{MAX_POOL_WINDOW}, not {window}.')
  _require()
  return _reverse_mode_only(_max_pool)(x, window, tuple(x.shape))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x, window, shape):
  return _max_pool_fwd(x, window, shape)[0]


def _max_pool_fwd(x, window, shape):
  *lead, height, width, batch = x.shape
  out = (*lead, height // window, width // window, batch)
  y, arg = jax.ffi.ffi_call(
      'lenet_max_pool_forward',
      (jax.ShapeDtypeStruct(out, x.dtype), jax.ShapeDtypeStruct(out, jnp.uint8)),
      vmap_method='broadcast_all')(x, window=np.int64(window))
  return y, arg


def _max_pool_bwd(window, shape, taps, dy):
  return (_unpool(dy, taps, window, shape),)


def _unpool(dy, taps, window, shape):
  """max pooling's gradient: dy at each window's winning tap, 0 elsewhere."""
  return jax.ffi.ffi_call('lenet_max_pool_backward', jax.ShapeDtypeStruct(shape, dy.dtype),
                          vmap_method='broadcast_all')(dy, taps, window=np.int64(window))


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def conv_max_pool(x, w, pads, window: int):
  """`max_pool(conv_chwn(x, w, pads), window)` in one pass, for CHWN `x`.

  The kernel computes each window's conv outputs in registers and writes only
  their maximum and the winning tap, so the full-size convolution is never
  stored; the gradient is the pool's (to the first maximum) through the conv's.
  """
  if x.dtype != jnp.float32 or w.dtype != jnp.float32:
    raise NotImplementedError(f'native conv_max_pool computes in float32, not {x.dtype}.')
  if not 1 <= window <= MAX_POOL_WINDOW:
    raise ValueError(f'native max pooling takes windows of 1..{MAX_POOL_WINDOW}, not {window}.')
  _require()
  return _reverse_mode_only(_conv_max_pool)(x, w, tuple(map(tuple, pads)), window)


def _conv_shape(x_shape, w_shape, pads):
  """The CHWN shape of the convolution of x with w."""
  (top, bottom), (left, right) = pads
  kh, kw, _, cout = w_shape[-4:]
  *lead, _, height, width, batch = x_shape
  return (*lead, cout, height + top + bottom - kh + 1, width + left + right - kw + 1, batch)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_max_pool(x, w, pads, window):
  return _conv_max_pool_fwd(x, w, pads, window)[0]


def _conv_max_pool_fwd(x, w, pads, window):
  *lead, cout, conv_h, conv_w, batch = _conv_shape(x.shape, w.shape, pads)
  out = (*lead, cout, conv_h // window, conv_w // window, batch)
  (top, _), (left, _) = pads
  y, taps = jax.ffi.ffi_call(
      'lenet_conv_max_pool_forward',
      (jax.ShapeDtypeStruct(out, x.dtype), jax.ShapeDtypeStruct(out, jnp.uint8)),
      vmap_method='broadcast_all')(x, w, pad_top=np.int64(top), pad_left=np.int64(left),
                                   window=np.int64(window))
  return y, (x, w, taps)


def _conv_max_pool_bwd(pads, window, residuals, dy):
  x, w, taps = residuals
  dconv = _unpool(dy, taps, window, _conv_shape(x.shape, w.shape, pads))
  return _conv_bwd(pads, (x, w), dconv)


_conv_max_pool.defvjp(_conv_max_pool_fwd, _conv_max_pool_bwd)


def native_conv(lhs, rhs, window_strides=(1, 1), padding='VALID', lhs_dilation=None,
                rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                batch_group_count=1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` by the native kernels, for NHWC or CHWN inputs."""
  del precision  # float32 throughout
  layout = layout_lib.check_supported(lhs.shape, rhs.shape, window_strides,
                                      lhs_dilation, rhs_dilation, dimension_numbers,
                                      feature_group_count, batch_group_count)
  if lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32:
    raise NotImplementedError(f'native_conv computes in float32; got {lhs.dtype} inputs '
                              f'and a {rhs.dtype} kernel. Use conv_impl="xla".')
  if preferred_element_type not in (None, jnp.float32):
    raise NotImplementedError(f'native_conv returns float32, not {preferred_element_type}.')
  _require()
  pads = tuple(map(tuple, layout_lib.explicit_pads(padding, rhs.shape[:2])))
  if layout == layout_lib.CHWN:
    return conv_chwn(lhs, rhs, pads)
  return conv_chwn(lhs.transpose(3, 1, 2, 0), rhs, pads).transpose(3, 1, 2, 0)


def main():
  path = library_path()
  print(f'built {build(path)}' if not os.path.exists(path) else f'up to date: {path}')
  load()
  x = jnp.ones((1, 3, 3, 16), jnp.float32)
  y = native_conv(x, jnp.ones((3, 3, 1, 1), jnp.float32), padding='SAME',
                  dimension_numbers=('CHWN', 'HWIO', 'CHWN'))
  want = lax.conv_general_dilated(x, jnp.ones((3, 3, 1, 1)), (1, 1), 'SAME',
                                  dimension_numbers=('CHWN', 'HWIO', 'CHWN'))
  if not np.allclose(y, want):
    raise SystemExit('the native convolution disagrees with XLA on a 3x3 box filter')
  print('native convolution agrees with XLA on a 3x3 box filter')

