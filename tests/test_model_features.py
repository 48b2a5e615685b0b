"""Controlled-comparison features: features(), inner_activation, conv init and lr scales, bools."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from conftest import float_tolerance
from lenet_jax import cli, fields, optim, train
from lenet_jax.config import ModelConfig, OptimConfig
from lenet_jax.model import LeNet5

# Every comparison here is of two programs computing one function.
pytestmark = pytest.mark.usefixtures('float32_matmuls')


@functools.cache
def inputs():
  """Four random images, made on first use (not at import: that would start the backend)."""
  return jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))


@pytest.mark.parametrize('cfg', [ModelConfig(), ModelConfig(head='gap', pool='stride'),
                                 ModelConfig(conv_impl='xla', dense=())])
def test_features_are_the_input_of_the_first_dense_layer(cfg):
  model, x = LeNet5(cfg), inputs()
  variables = model.init(jax.random.key(0), x)
  features = model.apply(variables, x, method=LeNet5.features)
  params = variables['params']
  h = features
  for i in range(1, len(cfg.dense) + 1):
    h = jax.nn.sigmoid(h @ params[f'dense{i}']['kernel'] + params[f'dense{i}']['bias'])
  logits = h @ params['logits']['kernel'] + params['logits']['bias']
  np.testing.assert_allclose(logits, model.apply(variables, x),
                             **float_tolerance(rtol=1e-5, atol=1e-6))


def test_gap_features_are_channel_means():
  cfg = ModelConfig(head='gap', conv_impl='patches')  # the batch-minor layout
  x = inputs()
  variables = LeNet5(cfg).init(jax.random.key(0), x)
  gap = LeNet5(cfg).apply(variables, x, method=LeNet5.features)
  maps = LeNet5(ModelConfig(conv_impl='patches')).apply(variables, x, method=LeNet5.features)
  assert gap.shape == (4, 16)
  np.testing.assert_allclose(gap, maps.reshape(4, 5 * 5, 16).mean(axis=1),
                             **float_tolerance(rtol=1e-5, atol=1e-6))


@pytest.mark.parametrize('inner_activation', [True, False])
def test_inner_activation_between_stacked_convs(inner_activation):
  cfg = ModelConfig(channels=(3,), kernel_size=(3,), padding=('valid',), convs_per_block=(2,),
                    pool='none', dense=(), activation='tanh', input_shape=(28, 28, 1),
                    inner_activation=inner_activation, conv_impl='xla')
  model, x = LeNet5(cfg), inputs()
  variables = model.init(jax.random.key(0), x)
  p = variables['params']

  def conv(x, name):
    return jax.lax.conv_general_dilated(
        x, p[name]['kernel'], (1, 1), 'VALID',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + p[name]['bias']

  inner = conv(x, 'block1_conv1')
  if inner_activation:
    inner = jnp.tanh(inner)
  expected = jnp.tanh(conv(inner, 'block1_conv2')).reshape(4, -1)
  np.testing.assert_allclose(model.apply(variables, x, method=LeNet5.features), expected,
                             **float_tolerance(rtol=1e-5, atol=1e-6))


def test_conv_init_scale_multiplies_only_the_conv_kernels():
  x = inputs()
  base = LeNet5(ModelConfig()).init(jax.random.key(0), x)['params']
  scaled = LeNet5(ModelConfig(conv_init_scale=25.0)).init(jax.random.key(0), x)['params']
  for name in base:
    factor = 25.0 if name.startswith('block') else 1.0
    np.testing.assert_array_equal(scaled[name]['kernel'], factor * base[name]['kernel'])
    np.testing.assert_array_equal(scaled[name]['bias'], base[name]['bias'])
  # A 5x5 mean-conv started from 25 times the kernel is the sum-conv's function.
  mean = ModelConfig(conv_init_scale=25.0, conv_reduction='mean')
  np.testing.assert_allclose(LeNet5(mean).apply({'params': scaled}, x),
                             LeNet5(ModelConfig()).apply({'params': base}, x),
                             **float_tolerance(rtol=1e-5, atol=1e-6))


# k = 2, so k^2 = 4 and k^4 = 16 are powers of two: every rescaling is exact in
# float32, and what is left between the sum-conv and the compensated mean-conv
# is the optimizer's own arithmetic.
SUM = ModelConfig(channels=(4, 8), kernel_size=(2,), padding=('valid',), pool='avg',
                  dense=(16,), activation='relu')
MEAN = ModelConfig(channels=(4, 8), kernel_size=(2,), padding=('valid',), pool='avg',
                   dense=(16,), activation='relu', conv_reduction='mean')


def _trained_logits(model_cfg, optim_cfg, steps=10):
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (steps, 32, 28, 28, 1), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, 10, (steps, 32)), jnp.int32)
  tx = optim.make_optimizer(optim_cfg, steps, 1)
  state = train.create_train_state(LeNet5(model_cfg), tx, jax.random.key(0), (28, 28, 1))
  for i in range(steps):
    state, _ = train.train_step(state, {'image': images[i], 'label': labels[i]})
  return LeNet5(model_cfg).apply({'params': state.params}, inputs())


def test_compensated_mean_conv_follows_the_sum_conv_under_adam():
  """Adam's update m / (sqrt(v) + eps) does not change with the gradient's scale, except
  through eps. The mean-conv started from k^2 times the kernel computes the sum-conv's
  function, gets 1/k^2 of its gradients, so Adam gives it the sum-conv's update divided
  by k^2 with eps multiplied by k^2 (4e-8 for 1e-8); times conv_lr_scale = k^2 the
  kernels stay k^2 times the sum-conv's. Only that eps is left: against gradients of
  1e-3 and more it moves an update by under 1e-4 relative, so after 10 steps logits of
  size 0.1 agree within 1e-5 (measured 6e-7). Without the lr scale (or without either
  scale) the convs move k^2 times too little for their size and the logits end about
  0.1 apart, as large as the logits themselves."""
  adam = OptimConfig(optimizer='adam', learning_rate=1e-2, schedule='constant')
  reference = _trained_logits(SUM, adam)
  compensated = _trained_logits(dataclasses.replace(MEAN, conv_init_scale=4.0),
                                dataclasses.replace(adam, conv_lr_scale=4.0))
  np.testing.assert_allclose(compensated, reference, **float_tolerance(rtol=0, atol=1e-5))
  init_only = _trained_logits(dataclasses.replace(MEAN, conv_init_scale=4.0), adam)
  uncompensated = _trained_logits(MEAN, adam)
  for other in (init_only, uncompensated):
    assert np.abs(other - reference).max() > 1e-2


def test_compensated_mean_conv_follows_the_sum_conv_under_sgd():
  """SGD's update is linear in the gradient: the kernel is k^2 times larger and its
  gradient k^2 times smaller, so the lr scale is k^4. No eps here; 1e-6 is float32
  rounding in programs that differ in where the (exact) powers of two enter (measured
  5e-8). Adam's k^2 would leave the convs k^2 times too slow."""
  sgd = OptimConfig(optimizer='sgd', learning_rate=0.1, schedule='constant')
  reference = _trained_logits(SUM, sgd)
  mean = dataclasses.replace(MEAN, conv_init_scale=4.0)
  compensated = _trained_logits(mean, dataclasses.replace(sgd, conv_lr_scale=16.0))
  np.testing.assert_allclose(compensated, reference, **float_tolerance(rtol=0, atol=1e-6))
  too_slow = _trained_logits(mean, dataclasses.replace(sgd, conv_lr_scale=4.0))
  assert np.abs(too_slow - reference).max() > 1e-2  # measured 0.09


def test_bool_flags_parse_true_and_false_only():
  fv = flags.FlagValues()
  cli.define_flags(fv)
  fv(['run.py', '--inner_activation=false', '--convs_per_block=2'])
  sweep = cli.sweep_from_flags(fv)
  assert sweep.base.model.inner_activation is False
  assert fields.parse_values('model.inner_activation', ['True,false']) == [True, False]
  with pytest.raises(ValueError, match=r"--inner_activation: '1' is not a valid bool; use "
                                       'true or false'):
    fields.parse_values('model.inner_activation', ['1'])
  help_text = fv.get_help()
  assert "--inner_activation: false: none between a block's stacked convs" in help_text
  for flag in ('--head', '--conv_init_scale', '--conv_lr_scale', '--augment_shift'):
    assert flag in help_text, flag
