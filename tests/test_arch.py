"""Analytic shapes, parameter counts and FLOPs, held against the real parameter tree."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import float_tolerance
from lenet_jax import arch
from lenet_jax.config import ModelConfig
from lenet_jax.model import LeNet5

ARCHITECTURES = [
    ModelConfig(),
    ModelConfig(kernel_size=(3,), padding=('same',), convs_per_block=(2,)),
    ModelConfig(kernel_size=(2, 4), padding=('same', 'same')),  # even, asymmetric
    ModelConfig(kernel_size=(6, 3), padding=(1, 'valid'), channels=(4, 8)),
    ModelConfig(channels=(6, 16, 32), kernel_size=(3,), padding=('same',), dense=(64,)),
    ModelConfig(kernel_size=(1, 1), padding=('valid',), pool='avg'),
    ModelConfig(pool='none', dense=()),
    ModelConfig(normalization='batch', activation='relu'),
    ModelConfig(input_shape=(32, 32, 3), padding=('valid',), kernel_size=(5,)),
    ModelConfig(input_shape=(32, 32, 3), kernel_size=(7, 2), padding=(3, 'same'), pool_size=3),
    ModelConfig(pool='stride'),
    ModelConfig(pool='stride', pool_size=3, kernel_size=(3,), padding=('same',),
                convs_per_block=(2,), inner_activation=False, normalization='batch'),
    ModelConfig(head='gap'),
    ModelConfig(head='gap', pool='stride', input_shape=(32, 32, 3), dense=()),
    ModelConfig(conv_init_scale=25.0, conv_reduction='mean', pool='avg'),
]


def _param_counts(params):
  return {name: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(sub))
          for name, sub in params.items()}


def test_default_is_the_notes_network():
  layers = arch.trace(ModelConfig())
  shapes = {l.name: l.out_shape for l in layers}
  assert shapes['block1_conv1'] == (28, 28, 6)
  assert shapes['block1_maxpool'] == (14, 14, 6)
  assert shapes['block2_conv1'] == (10, 10, 16)
  assert shapes['block2_maxpool'] == (5, 5, 16)
  assert shapes['flatten'] == (400,)
  assert arch.totals(ModelConfig())['params'] == 61_706
  # Hand count: convs 117,600 + 240,000 multiply-adds, dense 48,000 + 10,080 + 840.
  assert arch.totals(ModelConfig())['macs'] == 416_520


@pytest.mark.parametrize('cfg', ARCHITECTURES, ids=lambda c: str(ARCHITECTURES.index(c)))
def test_trace_matches_the_real_tree(cfg):
  model = LeNet5(cfg)
  x = jnp.zeros((2, *cfg.input_shape))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  real = _param_counts(variables['params'])
  layers = arch.trace(cfg)
  analytic = {l.name: l.params for l in layers if l.params}
  assert analytic == real
  # The output and the flatten size that fixes the first dense layer's input.
  out = jax.eval_shape(model.apply, variables, x)
  assert out.shape == (2, cfg.num_classes)
  flatten = next(l for l in layers if l.kind == 'flatten').out_shape[0]
  first_dense = 'dense1' if cfg.dense else 'logits'
  assert variables['params'][first_dense]['kernel'].shape[0] == flatten
  for layer in layers:
    if layer.kind == 'conv':
      kernel = variables['params'][layer.name]['kernel'].shape
      assert layer.macs == layer.out_shape[0] * layer.out_shape[1] * int(np.prod(kernel))


@pytest.mark.parametrize('cfg, message', [
    (ModelConfig(kernel_size=(11,), padding=('valid',)),
     'block 2 conv 1 (block2_conv1): output size 9 + 0 - 11 + 1 = -1'),
    (ModelConfig(channels=(6, 16, 6), padding=('valid',)),
     'block 3 conv 1 (block3_conv1): output size 4 + 0 - 5 + 1 = 0'),
    (ModelConfig(channels=(6, 16, 32, 64), kernel_size=(3,), padding=('same',), pool_size=2,
                 input_shape=(8, 8, 1)), 'block 4 pool: output size 1 // 2 = 0'),
])
def test_impossible_architectures_raise_before_compiling(cfg, message):
  with pytest.raises(ValueError, match='impossible architecture') as e:
    arch.trace(cfg)
  assert message in str(e.value)


def test_receptive_field():
  # 5x5 conv: 5; 2x2 pool: 6; 5x5 conv at stride 2: 6 + 4*2 = 14; pool: 16.
  assert [l.receptive_field for l in arch.trace(ModelConfig()) if l.kind != 'dense'] == [
      5, 6, 14, 16, 16]
  stacked = ModelConfig(kernel_size=(3,), padding=(1, 'valid'), convs_per_block=(2,))
  assert arch.totals(stacked)['receptive_field'] == 16


def test_strided_conv_shapes_macs_and_receptive_field():
  # 28 -> conv 28 -> every 2nd: 14; 14 -> conv 10 -> every 2nd: 5 (LeNet's sizes).
  layers = arch.trace(ModelConfig(pool='stride'))
  assert [l.name for l in layers][:2] == ['block1_conv1', 'block2_conv1']
  assert [l.out_shape for l in layers][:3] == [(14, 14, 6), (5, 5, 16), (400,)]
  # Only the kept output positions cost multiply-adds: a quarter of the stride-1 conv's.
  assert layers[0].macs == 14 * 14 * 6 * 5 * 5 * 1
  assert layers[1].macs == 5 * 5 * 16 * 5 * 5 * 6
  # 5; then 5x5 at jump 2: 5 + 4*2 = 13 (pooling would have added 1 per block).
  assert [l.receptive_field for l in layers][:2] == [5, 13]
  # An odd map keeps ceil(size / s): 9 -> 5 at stride 2, 10 -> 4 at stride 3.
  odd = arch.trace(ModelConfig(channels=(4,), kernel_size=(3,), padding=('valid',),
                               pool='stride', input_shape=(11, 11, 1)))
  assert odd[0].out_shape == (5, 5, 4)
  three = arch.trace(ModelConfig(channels=(4,), kernel_size=(3,), padding=('same',),
                                 convs_per_block=(2,), pool='stride', pool_size=3,
                                 input_shape=(10, 10, 1)))
  assert [l.out_shape for l in three][:2] == [(10, 10, 4), (4, 4, 4)]
  assert [l.receptive_field for l in three][:2] == [3, 5]


@pytest.mark.usefixtures('float32_matmuls')
@pytest.mark.parametrize('conv_impl', ['xla', 'patches'])
@pytest.mark.parametrize('padding', ['valid', 'same', 1])
def test_strided_conv_is_a_strided_convolution(conv_impl, padding):
  """The stride-1 conv subsampled [::s, ::s] equals XLA's strided conv, NHWC and CHWN."""
  cfg = ModelConfig(channels=(3,), kernel_size=(4,), padding=(padding,), pool='stride',
                    pool_size=3, dense=(), activation='relu', input_shape=(13, 13, 2),
                    conv_impl=conv_impl)
  x = jax.random.normal(jax.random.key(1), (2, 13, 13, 2))
  model = LeNet5(cfg)
  variables = model.init(jax.random.key(0), x)
  p = variables['params']['block1_conv1']
  pads = arch.conv_pads(4, padding)
  strided = jax.lax.conv_general_dilated(x, p['kernel'], (3, 3), (pads, pads),
                                         dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  expected = jax.nn.relu(strided + p['bias']).reshape(2, -1)
  got = model.apply(variables, x, method=LeNet5.features)
  assert got.shape == expected.shape == (2, int(np.prod(arch.trace(cfg)[0].out_shape)))
  np.testing.assert_allclose(got, expected, **float_tolerance(rtol=1e-5, atol=1e-5))


def test_gap_head_does_not_grow_with_the_map():
  def params(size, head):
    return arch.totals(ModelConfig(head=head, input_shape=(size, size, 1),
                                   padding=('same',)))['params']
  assert params(28, 'gap') == params(64, 'gap')
  assert params(28, 'flatten') != params(64, 'flatten')
  layers = arch.trace(ModelConfig(head='gap', input_shape=(64, 64, 1), padding=('same',)))
  assert [(l.name, l.out_shape) for l in layers if l.kind == 'flatten'] == [('gap', (16,))]
  # The first dense layer takes C inputs instead of H*W*C: 16*120 + 120.
  assert next(l for l in layers if l.name == 'dense1').params == 16 * 120 + 120


def test_even_kernel_same_padding_is_asymmetric():
  assert arch.conv_pads(2, 'same') == (0, 1)
  assert arch.conv_pads(4, 'same') == (1, 2)
  assert arch.conv_pads(5, 'same') == (2, 2)
  layers = arch.trace(ModelConfig(kernel_size=(4,), padding=('same',)))
  assert layers[0].out_shape == (28, 28, 6)


def test_describe_prints_every_layer():
  text = arch.describe(ModelConfig())
  for name in ('block1_conv1', 'block2_maxpool', 'flatten', 'logits', '61,706'):
    assert name in text


@pytest.mark.parametrize('config, message', [
    # Its first conv (5x5, no padding) has no output on a 4x4 image: built
    # directly, it used to make a network whose output ignored its input.
    (ModelConfig(channels=(2, 2), kernel_size=(5, 1), padding=('valid', 3), pool='none',
                 dense=(), input_shape=(4, 4, 1), conv_impl='xla'),
     'impossible architecture at block 1 conv 1'),
    (ModelConfig(channels=(6, 16, 32), padding=('valid',)), 'impossible architecture at block 3'),
    (ModelConfig(activation='swish'), "model.activation='swish' is not one of"),
    (ModelConfig(channels=(6, 0)), 'model.channels[1]=0 must be a positive integer'),
    (ModelConfig(kernel_size=(5, 3, 3)), 'kernel_size=(5, 3, 3) has 3 entries'),
    (ModelConfig(head='avg'), "model.head='avg' is not one of ('flatten', 'gap')"),
    (ModelConfig(pool='strided'), "model.pool='strided' is not one of"),
    (ModelConfig(inner_activation='no'), "model.inner_activation='no' must be True or False"),
    (ModelConfig(inner_activation=False), 'model.inner_activation=False has no effect'),
    (ModelConfig(conv_init_scale=0.0), 'model.conv_init_scale=0.0 must be > 0'),
    (ModelConfig(conv_init_scale=float('nan')), 'model.conv_init_scale=nan must be a finite'),
])
def test_lenet5_built_directly_is_held_to_the_command_lines_rules(config, message):
  """One validation (lenet_jax.validation) for the module and every entry point."""
  with pytest.raises(ValueError, match=re.escape(message)):
    LeNet5(config).init(jax.random.key(0), jnp.zeros((1, *config.input_shape)))
