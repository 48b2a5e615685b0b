"""The imported steps used wrongly, or in ways the defaults do not cover: each ends
in one message naming the value and the fix, or does what docs/api.md says."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lenet_jax
from conftest import float_tolerance
from lenet_jax import steps

pytestmark = pytest.mark.usefixtures('float32_matmuls')


class Masks(nn.Module):
  """Returns its dropout mask (times w): with w = 1 the output is the mask itself."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    w = self.param('w', nn.initializers.ones, (16,))
    mask = nn.Dropout(0.5, deterministic=not train)(jnp.ones((x.shape[0], 16)))
    return mask * w


def _sum_loss(outputs, labels):
  return outputs.sum(-1)


@pytest.mark.parametrize('collections', [('dropout',), ('noise', 'dropout')])
def test_the_documented_key_schedule_reproduces_the_masks(collections):
  """Step t gives collection i piece i of split(fold_in(state.key, t), n): with SGD at
  rate 1 and loss sum(mask * w), the step moves w by exactly the mask it drew."""
  model = Masks()
  state = lenet_jax.create_train_state(model, optax.sgd(1.0), jax.random.key(3), (1,))
  train_step, _ = lenet_jax.make_train_step(loss_fn=_sum_loss, rng_collections=collections,
                                            donate=False)
  batch = {'image': np.zeros((1, 1), np.float32), 'label': np.zeros((1, 16), np.float32)}
  for t in range(3):
    before = np.asarray(state.params['w'])
    state, _ = train_step(state, batch)
    drawn = before - np.asarray(state.params['w'])
    # The documented schedule, by hand ...
    pieces = jax.random.split(jax.random.fold_in(state.key, t), len(collections))
    by_hand = dict(zip(collections, pieces))
    # ... is what lenet_jax.step_keys computes, and it draws the very mask.
    for name, key in lenet_jax.step_keys(state.key, t, collections).items():
      np.testing.assert_array_equal(jax.random.key_data(key),
                                    jax.random.key_data(by_hand[name]))
    want = model.apply({'params': {'w': jnp.ones(16)}}, batch['image'], train=True,
                       rngs=by_hand)[0]
    np.testing.assert_array_equal(drawn, want)
    assert set(np.unique(drawn)) <= {0.0, 2.0} and 0 < drawn.sum() < 32


def test_the_nnx_module_stays_usable_after_donating_steps():
  module = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
  kernel = np.asarray(module.kernel[...])
  state = lenet_jax.create_train_state(module, optax.sgd(0.1))
  batch = {'image': np.ones((2, 4), np.float32), 'label': np.array([0, 1])}
  for _ in range(2):
    state, _ = lenet_jax.train_step(state, batch)  # donates the state
  np.testing.assert_array_equal(np.asarray(module.kernel[...]), kernel)  # not deleted
  assert module(jnp.ones((1, 4))).shape == (1, 3)
  assert not np.array_equal(np.asarray(state.module().kernel[...]), kernel)


class IsTrain(nn.Module):
  @nn.compact
  def __call__(self, x, is_train: bool = False):
    return nn.Dense(10)(nn.Dropout(0.5, deterministic=not is_train)(x.reshape(x.shape[0], -1)))


class Verbose(nn.Module):
  @nn.compact
  def __call__(self, x, verbose=False):
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize('model, name', [(IsTrain(), 'is_train'), (Verbose(), 'verbose')])
def test_an_unrecognised_switch_is_named_not_left_off(model, name):
  with pytest.raises(ValueError) as error:
    lenet_jax.create_train_state(model, optax.sgd(0.1), jax.random.key(0), (4, 4, 1))
  message = str(error.value)
  assert f"takes '{name}', which looks like a switch" in message
  assert 'train, training, is_training' in message and 'deterministic' in message
  assert f"make_train_step(mode_arg='{name}')" in message and 'mode_arg=None' in message


class NNXWithAFlag(nnx.Module):
  def __init__(self, rngs):
    self.dense = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x, return_features: bool = False):
    return x if return_features else self.dense(x)


def test_an_nnx_module_s_own_boolean_argument_is_left_alone():
  """NNX modules are switched by .train()/.eval(), so a flag of theirs is no mode."""
  state = lenet_jax.create_train_state(NNXWithAFlag(nnx.Rngs(0)), optax.sgd(0.1))
  state, metrics = lenet_jax.train_step(state, {'image': np.ones((2, 4), np.float32),
                                               'label': np.array([0, 1])})
  assert int(metrics['count']) == 2


def test_a_named_switch_trains_with_dropout():
  state = lenet_jax.create_train_state(IsTrain(), optax.sgd(0.0), jax.random.key(0),
                                       (4, 4, 1), mode_arg='is_train')
  train_step, eval_step = lenet_jax.make_train_step(mode_arg='is_train', donate=False)
  batch = {'image': np.full((8, 4, 4, 1), 200, np.uint8), 'label': np.zeros(8, np.int32)}
  losses = {float(train_step(state.replace(step=t), batch)[1]['loss']) for t in range(3)}
  assert len(losses) == 3  # a new dropout mask each step: it trains in training mode
  assert float(eval_step(state, batch)['count']) == 8
  # And a model whose flag is not a mode trains as it is with mode_arg=None.
  lenet_jax.create_train_state(Verbose(), optax.sgd(0.1), jax.random.key(0), (4, 4, 1),
                               mode_arg=None)


class Linear(nn.Module):
  outputs: int = 10

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.outputs)(x.reshape(x.shape[0], -1).astype(jnp.float32))


def test_a_masked_training_batch_is_the_batch_without_its_padding():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (6, 4, 4, 1), np.uint8)
  labels = rng.integers(0, 10, 6).astype(np.int32)
  padded = {'image': np.concatenate([images, np.zeros((2, 4, 4, 1), np.uint8)]),
            'label': np.concatenate([labels, [3, 3]]).astype(np.int32),
            'mask': np.arange(8) < 6}
  start = lenet_jax.create_train_state(Linear(), optax.sgd(0.5), jax.random.key(0), (4, 4, 1))
  step, _ = lenet_jax.make_train_step(donate=False)
  real, real_metrics = step(start, {'image': images, 'label': labels})
  masked, masked_metrics = step(start, padded)
  np.testing.assert_allclose(float(masked_metrics['loss']), float(real_metrics['loss']),
                             **float_tolerance(rtol=1e-6))
  assert int(masked_metrics['count']) == 6
  assert int(masked_metrics['correct']) == int(real_metrics['correct'])
  for a, b in zip(jax.tree.leaves(masked.params), jax.tree.leaves(real.params)):
    np.testing.assert_allclose(a, b, **float_tolerance(rtol=1e-5, atol=1e-7))


@pytest.mark.parametrize('mask, message', [
    (np.ones(4, np.float32), "batch['mask'] has dtype float32; it must be boolean"),
    (np.ones(4, np.int32), "batch['mask'] has dtype int32; it must be boolean"),
    (np.ones(3, bool), "batch['mask'] has shape (3,); it must have one entry per example"),
])
def test_a_mask_that_is_not_one_boolean_per_example_is_refused(mask, message):
  state = lenet_jax.create_train_state(Linear(), optax.sgd(0.1), jax.random.key(0), (4, 4, 1))
  batch = {'image': np.zeros((4, 4, 4, 1), np.uint8), 'label': np.zeros(4, np.int32),
           'mask': mask}
  train_step, eval_step = lenet_jax.make_train_step(donate=False)
  for step in (train_step, eval_step):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')
                       .replace('[', r'\[').replace(']', r'\]')):
      step(state, batch)


def test_regression_reports_no_correct_count():
  state = lenet_jax.create_train_state(Linear(1), optax.sgd(0.1), jax.random.key(0), (4,))
  mse = lambda outputs, targets: (outputs[:, 0] - targets) ** 2
  train_step, eval_step = lenet_jax.make_train_step(loss_fn=mse, donate=False)
  batch = {'image': np.ones((4, 4), np.float32), 'label': np.arange(4, dtype=np.float32)}
  _, metrics = train_step(state, batch)
  assert set(metrics) == {'loss', 'count'}
  assert set(eval_step(state, batch)) == {'loss_sum', 'count'}
  # One output per example, squeezed or not, with float or integer targets: no count.
  squeezed = lambda outputs, targets: (outputs[:, 0] - targets) ** 2
  for labels in (np.arange(4, dtype=np.float32), np.arange(4)):
    assert 'correct' not in lenet_jax.make_train_step(loss_fn=squeezed, donate=False)[0](
        state, {'image': batch['image'], 'label': labels})[1]
  # Classification keeps its count, with integer or soft labels.
  cls = lenet_jax.create_train_state(Linear(3), optax.sgd(0.1), jax.random.key(0), (4,))
  assert 'correct' in train_step(cls, {'image': batch['image'],
                                       'label': np.array([0, 1, 2, 0])})[1]
  soft = lenet_jax.make_train_step(loss_fn=optax.softmax_cross_entropy, donate=False)[0]
  assert 'correct' in soft(cls, {'image': batch['image'], 'label': np.eye(3)[[0, 1, 2, 0]]})[1]


class Tokens(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.Embed(100, 8)(x).mean(1))


def test_integer_tokens_get_the_fix_in_their_error():
  tokens = np.random.default_rng(0).integers(0, 100, (4, 7)).astype(np.int32)
  with pytest.raises(ValueError, match=r'input_dtype=jnp.int32\), and make_train_step\('
                     r'preprocess=None\)'):
    lenet_jax.create_train_state(Tokens(), optax.sgd(0.1), jax.random.key(0), (7,))
  state = lenet_jax.create_train_state(Tokens(), optax.sgd(0.1), jax.random.key(0), (7,),
                                       input_dtype=jnp.int32)
  with pytest.raises(ValueError, match=r"batch\['image'\] \(int32\) reached the model as "
                     r'floats; for integer token inputs pass make_train_step\(preprocess=None'):
    lenet_jax.train_step(state, {'image': tokens, 'label': np.zeros(4, np.int32)})


@pytest.mark.parametrize('batch, message', [
    ({'x': np.zeros((2, 4, 4, 1)), 'label': np.zeros(2, np.int32)},
     "the batch has no 'image' (its inputs); its keys are 'label', 'x'. Name the batch's "
     'keys with make_train_step(input_key=...).'),
    ({'image': np.zeros((2, 4, 4, 1)), 'y': np.zeros(2, np.int32)},
     "the batch has no 'label' (its labels); its keys are 'image', 'y'. Name the batch's "
     'keys with make_train_step(label_key=...).'),
])
def test_a_missing_batch_key_names_the_setting(batch, message):
  state = lenet_jax.create_train_state(Linear(), optax.sgd(0.1), jax.random.key(0), (4, 4, 1))
  for step in (lenet_jax.make_train_step(donate=False)):
    with pytest.raises(KeyError) as error:
      step(state, batch)
    assert str(error.value) == message


@pytest.mark.native_cpu
def test_forward_mode_through_the_native_convolution_names_the_alternative():
  x = jnp.ones((2, 28, 28, 1))
  native = lenet_jax.LeNet5(lenet_jax.ModelConfig(conv_impl='native'))
  variables = native.init(jax.random.key(0), x)
  forward = lambda model: jax.jvp(lambda p: model.apply({**variables, 'params': p}, x),
                                  (variables['params'],), (variables['params'],))
  with pytest.raises(TypeError, match="conv_impl='native' has no forward-mode derivative"
                     r".*conv_impl='xla'"):
    forward(native)
  out, tangent = forward(lenet_jax.LeNet5(lenet_jax.ModelConfig(conv_impl='xla')))
  assert out.shape == tangent.shape == (2, 10)
  jax.grad(lambda p: native.apply({**variables, 'params': p}, x).sum())(variables['params'])


def test_the_step_builders_are_exported():
  assert lenet_jax.step_functions is steps.step_functions
  assert lenet_jax.step_keys is steps.step_keys
  for name in ('step_functions', 'step_keys', 'make_train_step'):
    assert name in lenet_jax.__all__
