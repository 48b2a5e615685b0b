"""The fast CPU convolutions and pooling compute the same function as XLA's."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from conftest import float_tolerance
from lenet_jax import conv
from lenet_jax import native
from lenet_jax.config import ModelConfig
from lenet_jax.model import LeNet5

CASES = [  # (kernel, padding, cin, cout, size)
    (1, ((0, 0), (0, 0)), 3, 4, 7),
    (2, ((0, 1), (0, 1)), 1, 6, 8),  # even kernel, asymmetric 'same'
    (3, ((1, 1), (1, 1)), 6, 16, 9),
    (4, ((1, 2), (1, 2)), 2, 3, 6),
    (5, ((2, 2), (2, 2)), 1, 6, 12),
    (5, ((0, 0), (0, 0)), 6, 16, 10),
    (6, ((3, 3), (0, 0)), 2, 2, 8),  # different padding per axis
    (7, ((1, 1), (1, 1)), 3, 5, 9),
    (11, ((5, 5), (5, 5)), 1, 2, 11),
    (3, ((-1, 0), (0, -1)), 2, 2, 7),  # negative padding crops, as in XLA
]


FAST_CONVS = {'patches': conv.patches_conv, 'native': native.native_conv}
# Parameters that compute through the native kernels: CPU only.
NATIVE = pytest.param('native', marks=pytest.mark.native_cpu)
FAST_IMPLS = ['patches', NATIVE]

# Every comparison here is of two programs computing one function: in full
# float32 off the CPU, where XLA's convolutions would otherwise use TF32.
pytestmark = pytest.mark.usefixtures('float32_matmuls')


@pytest.mark.parametrize('impl', FAST_IMPLS)
@pytest.mark.parametrize('layout', ['NHWC', 'CHWN'])
@pytest.mark.parametrize('kernel, padding, cin, cout, size', CASES)
def test_fast_convs_match_xla_values_and_gradients(kernel, padding, cin, cout, size, layout,
                                                   impl):
  kx, kw, kg = jax.random.split(jax.random.key(kernel), 3)
  # 19 images: the native kernels' 16-wide vectors and their scalar remainder.
  batch = 19
  shape = (batch, size, size + 1, cin) if layout == 'NHWC' else (cin, size, size + 1, batch)
  x = jax.random.normal(kx, shape)
  w = jax.random.normal(kw, (kernel, kernel, cin, cout))
  dims = conv.NHWC if layout == 'NHWC' else conv.CHWN
  args = dict(window_strides=(1, 1), padding=padding, dimension_numbers=dims)
  want = lax.conv_general_dilated(x, w, **args)
  got = FAST_CONVS[impl](x, w, **args)
  np.testing.assert_allclose(got, want, **float_tolerance(rtol=1e-5, atol=1e-5))
  cotangent = jax.random.normal(kg, want.shape)
  loss = lambda f: lambda x, w: jnp.sum(f(x, w, **args) * cotangent)
  want_grads = jax.grad(loss(lax.conv_general_dilated), argnums=(0, 1))(x, w)
  got_grads = jax.jit(jax.grad(loss(FAST_CONVS[impl]), argnums=(0, 1)))(x, w)
  for g, wg in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, wg, **float_tolerance(rtol=1e-4, atol=1e-4))


@pytest.mark.native_cpu
@pytest.mark.parametrize('shared_input', [False, True])
def test_native_conv_vmapped_over_models_matches_xla(shared_input):
  """vmap (over models) turns into one native call over a leading axis."""
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (4, 3, 9, 9, 20))  # (models, C, H, W, N)
  w = jax.random.normal(kw, (4, 3, 3, 3, 5))
  in_axes = (None, 0) if shared_input else (0, 0)
  x = x[0] if shared_input else x
  args = dict(window_strides=(1, 1), padding='SAME', dimension_numbers=conv.CHWN)

  def forward(f):
    return lambda x, w: f(x, w, **args)

  def grads(f):
    return jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w, **args))), argnums=(0, 1))
  for fn in (forward, grads):
    want = jax.vmap(fn(lax.conv_general_dilated), in_axes)(x, w)
    got = jax.jit(jax.vmap(fn(native.native_conv), in_axes))(x, w)
    for g, wg in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, wg, rtol=1e-4, atol=1e-4)


def test_native_conv_refuses_other_dtypes():
  x, w = jnp.zeros((1, 8, 8, 2), jnp.bfloat16), jnp.zeros((3, 3, 2, 2), jnp.bfloat16)
  with pytest.raises(NotImplementedError, match='float32.*conv_impl="xla"'):
    native.native_conv(x, w, padding='SAME', dimension_numbers=conv.NHWC)


@pytest.mark.parametrize('cxx, message', [
    ('/nonexistent/g++', 'apt-get install g++'),
    ('false', 'building the native convolution failed'),
])
def test_native_build_failures_say_how_to_fix(tmp_path, monkeypatch, cxx, message):
  monkeypatch.setenv('CXX', cxx)
  with pytest.raises(native.NativeUnavailable, match=message):
    native.build(str(tmp_path / 'conv.so'))
  assert not list(tmp_path.iterdir())  # no half-built library left behind


@pytest.mark.parametrize('padding', ['SAME', 'VALID'])
def test_string_paddings(padding):
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
  w = jax.random.normal(jax.random.key(1), (4, 4, 3, 2))
  args = dict(window_strides=(1, 1), padding=padding, dimension_numbers=conv.NHWC)
  np.testing.assert_allclose(conv.patches_conv(x, w, **args),
                             lax.conv_general_dilated(x, w, **args),
                             **float_tolerance(rtol=1e-5, atol=1e-5))


def test_flax_conv_with_patches_equals_flax_conv():
  x = jax.random.normal(jax.random.key(0), (2, 10, 10, 3))
  ref = nn.Conv(5, (3, 3), padding='SAME')
  fast = nn.Conv(5, (3, 3), padding='SAME', conv_general_dilated=conv.patches_conv)
  params = ref.init(jax.random.key(1), x)
  np.testing.assert_allclose(fast.apply(params, x), ref.apply(params, x),
                             **float_tolerance(rtol=1e-5, atol=1e-5))


@pytest.mark.parametrize('impl', FAST_CONVS)
def test_unsupported_convolutions_say_so(impl):
  x, w = jnp.zeros((1, 8, 8, 2)), jnp.zeros((3, 3, 2, 2))
  with pytest.raises(NotImplementedError, match='conv_impl="xla"'):
    FAST_CONVS[impl](x, w, window_strides=(2, 2), padding='VALID',
                     dimension_numbers=conv.NHWC)
  with pytest.raises(NotImplementedError, match='conv_impl="xla"'):
    FAST_CONVS[impl](jnp.zeros((1, 2, 8, 8)), w, padding='VALID',
                     dimension_numbers=('NCHW', 'HWIO', 'NCHW'))


MODELS = [
    ModelConfig(),
    ModelConfig(activation='relu', pool='avg', kernel_size=(4, 3), padding=('same', 1)),
    ModelConfig(activation='gelu', kernel_size=(3,), convs_per_block=(2,), padding=(1, 'valid')),
    ModelConfig(activation='tanh', normalization='batch', conv_reduction='mean'),
    ModelConfig(pool='none', channels=(4,), kernel_size=(2,), padding=('same',), dense=()),
    ModelConfig(input_shape=(32, 32, 3), activation='relu', pool_size=3),
]


@pytest.mark.parametrize('impl', FAST_IMPLS)
@pytest.mark.parametrize('cfg', MODELS, ids=lambda c: str(MODELS.index(c)))
def test_the_model_is_the_same_function_with_every_convolution(cfg, impl):
  """The fast convolutions (CHWN layout, pooling before monotone activations) == 'xla'."""
  fast = LeNet5(dataclasses.replace(cfg, conv_impl=impl))
  ref = LeNet5(dataclasses.replace(cfg, conv_impl='xla'))
  x = jax.random.uniform(jax.random.key(0), (5, *cfg.input_shape))
  variables = ref.init(jax.random.key(1), x)
  labels = jnp.arange(5) % cfg.num_classes

  def loss(model):
    def f(params):
      logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                              mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits
    return f
  # Jitted: op by op, the patches convolution dispatches hundreds of small ops.
  (ref_loss, ref_logits), ref_grads = jax.jit(jax.value_and_grad(loss(ref), has_aux=True))(
      variables['params'])
  (fast_loss, fast_logits), fast_grads = jax.jit(jax.value_and_grad(loss(fast), has_aux=True))(
      variables['params'])
  np.testing.assert_allclose(fast_logits, ref_logits, **float_tolerance(rtol=1e-5, atol=1e-5))
  for got, want in zip(jax.tree.leaves(fast_grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(got, want, **float_tolerance(rtol=1e-4, atol=1e-5))


@pytest.mark.parametrize('kind, reference', [('max', nn.max_pool), ('avg', nn.avg_pool)])
@pytest.mark.parametrize('size, window', [(10, 2), (11, 2), (9, 3)])
def test_window_pool_matches_flax(kind, reference, size, window):
  x = jax.random.normal(jax.random.key(size), (2, size, size, 3))
  np.testing.assert_allclose(conv.window_pool(x, window, kind),
                             reference(x, (window, window), strides=(window, window)),
                             **float_tolerance(rtol=1e-6))


@pytest.mark.native_cpu
@pytest.mark.parametrize('shape, window', [((3, 10, 10, 37), 2), ((2, 11, 9, 16), 2),
                                           ((2, 9, 9, 5), 3), ((4, 7, 7, 20), 1)])
def test_native_max_pool_is_flax_max_pool_with_its_gradient_even_at_ties(shape, window):
  """Values on a half-integer grid tie often: the gradient still goes to the first maximum."""
  x = jnp.round(jax.random.normal(jax.random.key(0), shape) * 2) / 2  # (C, H, W, N)
  reference = lambda x: nn.max_pool(x.transpose(3, 1, 2, 0), (window, window),
                                    strides=(window, window)).transpose(3, 1, 2, 0)
  pool = lambda x: native.max_pool(x, window)
  np.testing.assert_array_equal(pool(x), reference(x))
  cotangent = jax.random.normal(jax.random.key(1), reference(x).shape)
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * cotangent))
  np.testing.assert_array_equal(jax.jit(grad(pool))(x), grad(reference)(x))
  models = jnp.stack([x, -x, 2 * x])  # vmapped over models: one call, leading axis
  np.testing.assert_array_equal(jax.jit(jax.vmap(grad(pool)))(models),
                                jax.vmap(grad(reference))(models))


@pytest.mark.native_cpu
@pytest.mark.parametrize('cin, cout, size, kernel, pads, window, batch', [
    (1, 6, 28, 5, ((2, 2), (2, 2)), 2, 37),  # the note's conv1, 16-wide vectors and remainder
    (6, 16, 14, 5, ((0, 0), (0, 0)), 2, 19),  # conv2: two blocks of 8 channels
    (3, 20, 11, 3, ((1, 1), (1, 1)), 3, 16),  # 3 blocks of channels; an odd remainder row
    (2, 5, 9, 4, ((1, 2), (0, 1)), 2, 5),  # even kernel, asymmetric pads
    (2, 3, 8, 2, ((0, 0), (0, 0)), 1, 17),
])
def test_native_conv_max_pool_is_conv_then_max_pool(cin, cout, size, kernel, pads, window,
                                                   batch):
  """The fused kernel == XLA's conv, then Flax's max pool: values and gradients, vmapped."""
  x = jax.random.normal(jax.random.key(0), (cin, size, size + 1, batch))  # CHWN
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, cin, cout))

  def reference(x, w):
    y = lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=conv.CHWN)
    return nn.max_pool(y.transpose(3, 1, 2, 0), (window, window),
                       strides=(window, window)).transpose(3, 1, 2, 0)
  fused = lambda x, w: native.conv_max_pool(x, w, pads, window)
  want = reference(x, w)
  np.testing.assert_allclose(fused(x, w), want, rtol=1e-5, atol=1e-5)
  cotangent = jax.random.normal(jax.random.key(2), want.shape)
  grads = lambda f: jax.grad(lambda x, w: jnp.sum(f(x, w) * cotangent), argnums=(0, 1))
  for got, expected in zip(jax.jit(grads(fused))(x, w), grads(reference)(x, w)):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  xs, ws = jnp.stack([x, -x]), jnp.stack([w, 2 * w])  # two models
  np.testing.assert_allclose(jax.jit(jax.vmap(fused))(xs, ws), jax.vmap(reference)(xs, ws),
                             rtol=1e-5, atol=1e-4)
  model_grads = lambda f: jax.vmap(
      jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1)))
  for got, expected in zip(jax.jit(model_grads(fused))(xs, ws), model_grads(reference)(xs, ws)):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


@pytest.mark.native_cpu
def test_native_max_pool_propagates_nan():
  for values in ([1., np.nan, 0., 2.], [np.nan, 1., 3., 2.], [1., 2., 3., np.nan]):
    x = jnp.array(values, jnp.float32).reshape(1, 2, 2, 1)
    assert np.isnan(native.max_pool(x, 2)).all()
    # and through the fused conv + pool: a 1x1 identity kernel
    assert np.isnan(native.conv_max_pool(x, jnp.ones((1, 1, 1, 1)), ((0, 0), (0, 0)), 2)).all()


@pytest.mark.native_cpu
def test_auto_picks_native_on_cpu_patches_on_gpu_and_xla_on_tpu(monkeypatch, caplog):
  assert native.available() is None, native.available()  # CI installs a compiler
  assert conv.conv_impl('auto', 'cpu') is native.native_conv
  assert conv.conv_impl('native', 'cpu') is native.native_conv
  # Without a compiler, auto says why and falls back to the patches convolution.
  monkeypatch.setattr(native, 'available', lambda: 'no C++ compiler')
  conv._native_reason.cache_clear()  # pylint: disable=protected-access
  try:
    with caplog.at_level('WARNING'):
      assert conv.conv_impl('auto', 'cpu') is conv.patches_conv
    assert 'no C++ compiler' in caplog.text and 'conv_impl=patches' in caplog.text
  finally:
    conv._native_reason.cache_clear()  # pylint: disable=protected-access
  assert conv.conv_impl('auto', 'gpu') is conv.patches_conv
  assert conv.conv_impl('auto', 'tpu') is lax.conv_general_dilated
  with pytest.raises(ValueError, match="conv_impl='fast'"):
    conv.conv_impl('fast')


@pytest.mark.native_cpu
def test_a_corrupt_native_library_says_to_delete_it(tmp_path, monkeypatch):
  broken = tmp_path / 'conv.so'
  broken.write_bytes(b'not a shared library')
  monkeypatch.setattr(native, 'library_path', lambda: str(broken))
  native.load.cache_clear()
  try:
    with pytest.raises(native.NativeUnavailable, match='delete it'):
      native.load()
  finally:
    native.load.cache_clear()
  monkeypatch.undo()
  native.load()  # the real library loads again and re-registers its targets
  x = jnp.ones((1, 4, 4, 16))
  np.testing.assert_allclose(native.max_pool(x, 2), jnp.ones((1, 2, 2, 16)))


@pytest.mark.parametrize('impl', ['xla', 'patches', NATIVE])
@pytest.mark.parametrize('window', [2, 6])
def test_max_pooling_never_hides_nan(impl, window):
  """XLA's CPU max reduction drops NaN for most shapes (a window of ones and one
  NaN pools to 1.0); every implementation must give NaN, so divergence shows."""
  from lenet_jax import model  # pylint: disable=import-outside-toplevel
  fn = conv.conv_impl(impl)
  x = np.ones((2, 12, 12, 33), np.float32)
  x[0, 0, 0, 0] = np.nan
  if conv.is_batch_minor(fn):
    x = x.transpose(3, 1, 2, 0)
  y = np.asarray(model.pool(jnp.asarray(x), 'max', window, fn))
  assert np.isnan(y).sum() == 1
  if conv.is_batch_minor(fn):
    assert np.isnan(y[0, 0, 0, 0]) and np.isnan(np.asarray(conv.window_pool(
        jnp.asarray(x), window, 'max'))).sum() == 1


@pytest.mark.parametrize('impl', ['xla', 'patches', NATIVE])
def test_a_nan_pixel_reaches_the_logits(impl):
  from lenet_jax.model import LeNet5  # pylint: disable=import-outside-toplevel
  from lenet_jax.config import ModelConfig  # pylint: disable=import-outside-toplevel
  net = LeNet5(ModelConfig(activation='relu', conv_impl=impl))
  x = np.ones((3, 28, 28, 1), np.float32)
  x[1, 5, 5, 0] = np.nan
  variables = net.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  logits = np.asarray(net.apply(variables, jnp.asarray(x)))
  assert np.isnan(logits[1]).all() and np.isfinite(logits[[0, 2]]).all()
