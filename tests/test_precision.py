"""ModelConfig.precision: 'default' is the program from before the field, the others what they say."""
import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from lenet_jax import conv, model, train
from lenet_jax.config import PRECISIONS, ModelConfig
from lenet_jax.model import LeNet5

IMPLS = ['auto', 'patches', 'xla']  # auto: the native kernels on the CPU (patches for bfloat16)


@functools.cache
def _inputs():
  """Eight random images, made on first use (at import it would start the backend)."""
  return jax.random.uniform(jax.random.key(1), (8, 28, 28, 1))


@functools.cache
def _variables():
  """float32 parameters, the same for every implementation and precision."""
  return jax.jit(LeNet5(ModelConfig()).init)(jax.random.key(0), _inputs())


@functools.cache
def _logits_and_program(cfg):
  fn = jax.jit(LeNet5(cfg).apply)
  return fn(_variables(), _inputs()), fn.lower(_variables(), _inputs()).as_text()


@pytest.mark.parametrize('impl', IMPLS)
def test_default_passes_no_precision_and_is_bitwise_the_unset_field(impl):
  # ModelConfig(conv_impl=...) leaves the field unset: the code path from before it existed.
  unset = ModelConfig(conv_impl=impl)
  logits, program = _logits_and_program(unset)
  explicit, explicit_program = _logits_and_program(dataclasses.replace(unset, precision='default'))
  assert explicit_program == program
  if jax.default_backend() == 'cpu':  # elsewhere autotuned kernels may differ run to run
    np.testing.assert_array_equal(explicit, logits)
  # Nothing but the backend's default reaches a convolution or a dot.
  for option in ('HIGHEST', 'HIGH>', 'HIGH,', 'algorithm', 'bf16'):
    assert option not in program, option


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('precision', ['float32', 'tf32'])
def test_float32_and_tf32_are_float32_on_the_cpu(impl, precision):
  if jax.default_backend() != 'cpu':
    pytest.skip('on a GPU/TPU these differ from the default by design')
  default, _ = _logits_and_program(ModelConfig(conv_impl=impl))
  logits, program = _logits_and_program(ModelConfig(conv_impl=impl, precision=precision))
  np.testing.assert_allclose(logits, default, rtol=0, atol=1e-6)
  if precision == 'float32':
    assert 'HIGHEST' in program  # passed explicitly, also where the CPU ignores it


@pytest.mark.parametrize('impl', ['patches', 'xla'])
def test_bfloat16_is_mixed_precision(impl):
  cfg = ModelConfig(conv_impl=impl, precision='bfloat16')
  # The initialisers run in float32: the same parameters as at any other precision.
  bf16_variables = jax.jit(LeNet5(cfg).init)(jax.random.key(0), _inputs())
  for a, b in zip(jax.tree.leaves(_variables()), jax.tree.leaves(bf16_variables)):
    assert a.dtype == b.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
  f32, _ = _logits_and_program(ModelConfig(conv_impl=impl, precision='float32'))
  logits, program = _logits_and_program(cfg)
  assert logits.dtype == jnp.float32 and 'bf16' in program
  np.testing.assert_allclose(logits, f32, rtol=0, atol=2e-2)
  assert not np.array_equal(logits, f32)  # it did round
  # Forward and backward, every convolution and dot multiplies bfloat16 operands.
  loss = lambda params: LeNet5(cfg).apply({'params': params}, _inputs()).sum()
  grad_program = jax.jit(jax.grad(loss)).lower(_variables()['params']).as_text()
  products = [line for line in grad_program.splitlines()
              if 'stablehlo.convolution' in line or 'stablehlo.dot_general' in line]
  assert len(products) >= 2 * 5  # 2 convs and 3 dense layers, forward and transposed
  for line in products:
    operands = re.search(r': \((.*)\) ->', line).group(1)
    assert operands.count('bf16>') == 2, line


def test_bfloat16_keeps_off_the_float32_native_kernels():
  assert conv.resolve_impl('auto', 'cpu', 'bfloat16') == 'patches'
  assert conv.resolve_impl('auto', 'gpu', 'bfloat16') == 'patches'
  assert conv.resolve_impl('auto', 'tpu', 'bfloat16') == 'xla'
  for precision in ('default', 'float32', 'tf32'):  # all float32 on the CPU
    assert conv.resolve_impl('auto', 'cpu', precision) == conv.resolve_impl('auto', 'cpu')
  with pytest.raises(ValueError, match="precision='bfloat16'"):
    conv.resolve_impl('native', 'cpu', 'bfloat16')
  with pytest.raises(ValueError, match="precision='bfloat16'"):
    LeNet5(ModelConfig(conv_impl='native', precision='bfloat16')).init(
        jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


def test_precision_arguments(monkeypatch):
  assert model.precision_arg('default', 'dot') is None
  assert model.precision_arg('bfloat16', 'conv') is None
  assert model.precision_arg('float32', 'conv') == lax.Precision.HIGHEST
  assert model.precision_arg('tf32', 'dot', 'cpu') == lax.Precision.HIGH
  # On a GPU with TF32, dots name the algorithm; convolutions take no algorithm.
  monkeypatch.setattr(model, '_has_tf32', lambda backend=None: True)
  assert model.precision_arg('tf32', 'dot') == lax.DotAlgorithmPreset.TF32_TF32_F32
  assert model.precision_arg('tf32', 'conv') == lax.Precision.HIGH
  with pytest.raises(ValueError, match='precision'):
    model.precision_arg('fp8', 'dot')


@pytest.mark.parametrize('precision', PRECISIONS)
def test_an_epoch_trains_at_every_precision(precision):
  # Synthetic data: 48 random images and labels, only to run the steps.
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (48, 28, 28, 1), np.uint8))
  labels = jnp.asarray(rng.integers(0, 10, 48))
  cfg = ModelConfig(channels=(2, 4), dense=(8,), activation='relu', precision=precision)
  state = train.create_train_state(LeNet5(cfg), optax.adam(1e-3), jax.random.key(0), (28, 28, 1))
  state, metrics = train.train_epoch(state, images, labels, jax.random.key(1), 8)
  assert np.isfinite(float(metrics['loss'])) and int(metrics['count']) == 48
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))


@pytest.mark.parametrize('impl', ['patches', 'xla'])
def test_tf32_rounds_on_a_gpu_and_float32_does_not(impl):
  """On the GPU: tf32 rounds the inputs of every product to 10 bits, float32 does not."""
  if not model._has_tf32():  # pylint: disable=protected-access
    pytest.skip('needs an NVIDIA GPU with TF32 (Ampere or later)')
  x = jax.random.normal(jax.random.key(2), (64, 28, 28, 1))
  cfg = ModelConfig(conv_impl=impl, dense=(), channels=(64, 128))
  variables = LeNet5(cfg).init(jax.random.key(0), x)
  tf32, f32 = (LeNet5(dataclasses.replace(cfg, precision=p)).apply(variables, x)
               for p in ('tf32', 'float32'))
  assert float(jnp.abs(tf32 - f32).max()) > 1e-5


def test_a_run_records_the_precision_it_computed():
  from lenet_jax import model  # pylint: disable=import-outside-toplevel
  assert model.precision_used('tf32', 'cpu') == 'float32'  # no TF32 on the CPU
  for precision in ('default', 'float32', 'bfloat16'):
    assert model.precision_used(precision, 'cpu') == precision
