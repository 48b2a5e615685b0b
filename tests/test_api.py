"""The steps with a researcher's own model: Linen dropout and batch norm, the same
model in NNX, custom losses and outputs, other batch keys, Flax's TrainState,
donation, parity with Flax's MNIST example, and the examples shown in docs/api.md."""
import functools
import os
import re
import runpy

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state as flax_train_state

import lenet_jax
from conftest import float_tolerance, separable_images
from lenet_jax import train
from lenet_jax.checkpoint import GroupCheckpoints, state_arrays

# Comparisons of two programs (a scan and a loop, ours and Flax's) run in full
# float32 off the CPU, where XLA would otherwise use TF32 (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('float32_matmuls')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 24  # the smallest image the separable bands fit in
IMAGE = (SIZE, SIZE, 1)


def batches(count, batch_size=32, seed=0):
  """`count` batches of uint8 separable images and int32 labels."""
  images, labels = separable_images(count * batch_size, np.random.default_rng(seed), SIZE)
  return [{'image': images[i:i + batch_size, ..., None],
           'label': labels[i:i + batch_size].astype(np.int32)}
          for i in range(0, count * batch_size, batch_size)]


class LinenCNN(nn.Module):
  """A researcher's CNN: batch norm and dropout, both switched by `train`."""
  dropout: float = 0.5

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.avg_pool(nn.relu(x), (2, 2), (2, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x.reshape(x.shape[0], -1))
    return nn.Dense(10)(x)


class NNXCNN(nnx.Module):
  """The same CNN in Flax NNX: modes by .train()/.eval(), keys from its Rngs."""

  def __init__(self, rngs: nnx.Rngs, dropout: float = 0.5):
    self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.norm = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.dense = nnx.Linear((SIZE // 2) ** 2 * 8, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.avg_pool(nnx.relu(self.norm(self.conv(x))), (2, 2), (2, 2))
    return self.dense(self.dropout(x.reshape(x.shape[0], -1)))


# Shared optimizers: a step compiles once per model and optimizer object, and
# every optax.adam(...) call makes a new one.
ADAM = optax.adam(1e-2)
FROZEN = optax.sgd(0.0)  # parameters stay put


@functools.cache
def linen_cnn(dropout):
  """One module object per rate: states share a compiled step only if they share it."""
  return LinenCNN(dropout)


def linen_state(tx, seed=0, dropout=0.5):
  return lenet_jax.create_train_state(linen_cnn(dropout), tx, jax.random.key(seed), IMAGE)


def nnx_state(tx, seed=0, dropout=0.5):
  return lenet_jax.create_train_state(NNXCNN(nnx.Rngs(seed), dropout), tx)


MAKERS = {'linen': linen_state, 'nnx': nnx_state}


def repeatable():
  """Tolerance for one program run twice on the same inputs: bitwise on the CPU;
  elsewhere GPU kernels may reorder float sums between runs."""
  return float_tolerance(off_cpu=(1e-5, 1e-6))


def train_losses(state, data, step=lenet_jax.train_step):
  losses = []
  for batch in data:
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  return state, losses


def host(tree):
  """Host copies of `tree`'s arrays (keys as their data), safe from donation."""
  def copy(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.array(x)
  return jax.tree.map(copy, tree)


@pytest.mark.parametrize('kind', ['linen', 'nnx'])
def test_dropout_and_batch_norm_models_train(kind):
  state = MAKERS[kind](ADAM)
  stats_before = host(state.model_state)
  state, losses = train_losses(state, batches(20))
  assert np.mean(losses[-3:]) < losses[0] / 2, losses
  stats = jax.tree.leaves(host(state.model_state))
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(stats_before), stats))


@pytest.mark.parametrize('kind', ['linen', 'nnx'])
def test_dropout_masks_differ_between_steps_and_repeat_for_a_key(kind):
  # With a zero learning rate the parameters stay put, so a training loss moves
  # only with the dropout mask (batch norm in training uses the batch's own statistics).
  batch = batches(1)[0]
  losses = lambda seed, dropout=0.5: train_losses(
      MAKERS[kind](FROZEN, seed, dropout), [batch] * 3)[1]
  first = losses(0)
  assert len(set(first)) == 3, first  # a new mask every step
  np.testing.assert_allclose(losses(0), first, **repeatable())  # the same masks for the key
  assert losses(1) != first
  without_dropout = losses(0, dropout=0.0)
  np.testing.assert_allclose(without_dropout, [without_dropout[0]] * 3, **repeatable())


def _example_losses(eval_step, state, images, labels):
  """Each example's loss as evaluated inside the batch `images` (by masking the others)."""
  out = []
  for i in range(len(labels)):
    mask = np.arange(len(labels)) == i
    out.append(float(eval_step(state, {'image': images, 'label': labels, 'mask': mask})
                     ['loss_sum']))
  return np.array(out)


def assert_evaluation_uses_running_averages(state, eval_step=lenet_jax.eval_step):
  """An example's evaluated loss does not depend on the rest of its batch."""
  a, b = batches(2, batch_size=8, seed=3)
  alone = _example_losses(eval_step, state, a['image'][:4], a['label'][:4])
  mixed = _example_losses(eval_step, state, np.concatenate([a['image'][:4], b['image']]),
                          np.concatenate([a['label'][:4], b['label']]))[:4]
  np.testing.assert_allclose(mixed, alone, **float_tolerance(rtol=1e-5))


@pytest.mark.parametrize('kind', ['linen', 'nnx'])
def test_evaluation_uses_running_averages_and_no_dropout(kind):
  state, _ = train_losses(MAKERS[kind](ADAM), batches(5))
  assert_evaluation_uses_running_averages(state)
  batch = batches(1, seed=4)[0]
  once, again = lenet_jax.eval_step(state, batch), lenet_jax.eval_step(state, batch)
  assert once.keys() == again.keys()
  for key in once:
    np.testing.assert_allclose(again[key], once[key], **repeatable())


class TrainsByDefault(nn.Module):
  """Flax ImageNet style: `train` defaults to True."""

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.BatchNorm(use_running_average=not train)(nn.Dense(32)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(nn.Dropout(0.5, deterministic=not train)(nn.relu(x)))


class Training(nn.Module):
  """The flag called `training`, and required."""

  @nn.compact
  def __call__(self, x, *, training: bool):
    x = nn.BatchNorm(use_running_average=not training)(nn.Dense(32)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(nn.Dropout(0.5, deterministic=not training)(nn.relu(x)))


class Deterministic(nn.Module):
  """The inverted flag: deterministic=True means evaluation."""

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    x = nn.BatchNorm(use_running_average=deterministic)(nn.Dense(32)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(nn.Dropout(0.5, deterministic=deterministic)(nn.relu(x)))


@pytest.mark.parametrize('model', [TrainsByDefault(), Training(), Deterministic()],
                         ids=lambda m: type(m).__name__)
def test_every_spelling_of_the_mode_is_passed(model):
  state = lenet_jax.create_train_state(model, FROZEN, jax.random.key(0), IMAGE)
  state, losses = train_losses(state, [batches(1)[0]] * 2)
  assert losses[0] != losses[1]  # dropout in training
  assert_evaluation_uses_running_averages(state)  # and not in evaluation


def test_a_mode_argument_the_model_does_not_take_is_an_error():
  state = linen_state(ADAM)
  train_step, _ = lenet_jax.make_train_step(mode_arg='training')
  with pytest.raises(ValueError, match=r"takes no argument 'training'.*mode_arg"):
    train_step(state, batches(1)[0])

  class TwoFlags(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False, deterministic: bool = True):
      return nn.Dense(10)(x.reshape(x.shape[0], -1))

  with pytest.raises(ValueError, match=r"several mode arguments \['train', 'deterministic'\]"):
    lenet_jax.create_train_state(TwoFlags(), ADAM, jax.random.key(0), IMAGE)


def test_the_nnx_path_matches_a_plain_nnx_optimizer_loop():
  data = batches(8)
  tx = ADAM
  state, losses = train_losses(nnx_state(tx), data)

  model = NNXCNN(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, images, labels):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(images), labels).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  model.train()
  plain = [float(step(model, optimizer, jnp.asarray(b['image'], jnp.float32) / 255.0,
                      b['label'])) for b in data]
  np.testing.assert_allclose(losses, plain, **float_tolerance(rtol=1e-5))
  trained = state.module()
  for ours, theirs in zip(jax.tree.leaves(host(nnx.state(trained))),
                          jax.tree.leaves(host(nnx.state(model)))):
    np.testing.assert_allclose(ours, theirs, **float_tolerance(rtol=1e-4, atol=1e-6))
  model.eval()
  trained.eval()
  images = jnp.asarray(data[0]['image'], jnp.float32) / 255.0
  np.testing.assert_allclose(trained(images), model(images),
                             **float_tolerance(rtol=1e-4, atol=1e-5))


def test_nnx_modules_are_taken_as_they_are():
  with pytest.raises(ValueError, match='initialised already'):
    lenet_jax.create_train_state(NNXCNN(nnx.Rngs(0)), ADAM, jax.random.key(0), IMAGE)
  with pytest.raises(ValueError, match='pass the NNX module itself'):
    lenet_jax.create_train_state(nnx.bridge.to_linen(NNXCNN), ADAM, jax.random.key(0), IMAGE)


def test_train_epoch_and_evaluate_take_an_nnx_state():
  data = batches(4)
  images = np.concatenate([b['image'] for b in data])
  labels = np.concatenate([b['label'] for b in data])
  state, metrics = train.train_epoch(nnx_state(ADAM), images, labels,
                                     jax.random.key(0), 32)
  assert int(metrics['count']) == 128
  assert int(train.evaluate(state, images, labels, 50)['count']) == 128


def test_optax_wrappers_train():
  tx = optax.MultiSteps(optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.inject_hyperparams(optax.adamw)(learning_rate=1e-2)), every_k_schedule=2)
  state = lenet_jax.create_train_state(MLP(), tx, jax.random.key(0), IMAGE)
  state, losses = train_losses(state, batches(20))
  assert np.mean(losses[-3:]) < losses[0] / 2, losses
  assert np.isclose(state.opt_state.inner_opt_state[1].hyperparams['learning_rate'], 1e-2)


class WithAux(nn.Module):
  """Returns (logits, aux), as models with auxiliary heads or losses do."""

  @nn.compact
  def __call__(self, x):
    features = nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(features), {'mean_activation': features.mean(-1)}


def smoothed_cross_entropy(outputs, labels):
  logits, _ = outputs
  return optax.softmax_cross_entropy(logits, optax.smooth_labels(jax.nn.one_hot(labels, 10), 0.1))


def xy(batch):
  return {'x': batch['image'], 'y': batch['label']}


def test_a_custom_loss_tuple_outputs_and_other_batch_keys():
  train_step, eval_step = lenet_jax.make_train_step(
      loss_fn=smoothed_cross_entropy, logits_fn=lambda outputs: outputs[0],
      input_key='x', label_key='y', donate=False)
  initial = lenet_jax.create_train_state(WithAux(), ADAM, jax.random.key(0), IMAGE)
  data = [xy(b) for b in batches(15)]
  state, losses = train_losses(initial, data, train_step)
  # The loss is the custom one: compare with it computed by hand on the initial state.
  logits, _ = WithAux().apply({'params': initial.params}, data[0]['x'] / np.float32(255))
  np.testing.assert_allclose(losses[0], smoothed_cross_entropy((logits, None), data[0]['y']).mean(),
                             **float_tolerance(rtol=1e-5))
  assert np.mean(losses[-3:]) < losses[0] / 2, losses
  sums = eval_step(state, data[0])
  assert int(sums['count']) == 32 and int(sums['correct']) >= 24


def test_soft_labels_count_correct_by_their_top_class():
  train_step, eval_step = lenet_jax.make_train_step(loss_fn=optax.softmax_cross_entropy)
  state = linen_state(ADAM)
  data = [{'image': b['image'], 'label': np.eye(10, dtype=np.float32)[b['label']]}
          for b in batches(15)]
  state, losses = train_losses(state, data, train_step)
  assert np.mean(losses[-3:]) < losses[0] / 2, losses
  sums = eval_step(state, data[0])
  assert int(sums['count']) == 32 and int(sums['correct']) >= 24


def test_outputs_that_are_not_logits_need_logits_fn():
  train_step, _ = lenet_jax.make_train_step(loss_fn=smoothed_cross_entropy)
  state = lenet_jax.create_train_state(WithAux(), ADAM, jax.random.key(0), IMAGE)
  with pytest.raises(ValueError, match=r'returns a tuple, not logits.*logits_fn='):
    train_step(state, batches(1)[0])


def test_a_loss_that_is_already_a_mean_is_an_error():
  train_step, _ = lenet_jax.make_train_step(
      loss_fn=lambda logits, labels: optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean())
  with pytest.raises(ValueError, match=r'one loss per example, shape \(32,\)'):
    train_step(linen_state(ADAM), batches(1)[0])


class TokenModel(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    return nn.Dense(10)(nn.Embed(100, 16)(tokens).mean(1))


def test_integer_token_inputs_pass_unscaled_with_preprocess_none():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 100, (32, 8)).astype(np.int32)
  batch = {'image': tokens, 'label': tokens[:, 0] % 10}
  state = lenet_jax.create_train_state(TokenModel(), optax.adam(3e-2), jax.random.key(0), (8,),
                                       input_dtype=jnp.int32)
  with pytest.raises(ValueError, match='integer'):  # the default divides by 255
    lenet_jax.eval_step(state, batch)
  train_step, eval_step = lenet_jax.make_train_step(preprocess=None)
  logits = TokenModel().apply({'params': state.params}, tokens)
  want = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).sum()
  np.testing.assert_allclose(float(eval_step(state, batch)['loss_sum']), want,
                             **float_tolerance(rtol=1e-5))
  state, losses = train_losses(state, [batch] * 20, train_step)
  assert losses[-1] < losses[0] / 2, losses


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1))))


class BatchNormMLP(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.BatchNorm(use_running_average=not train)(nn.Dense(32)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(nn.relu(x))


def test_flax_train_states_are_accepted():
  variables = MLP().init(jax.random.key(0), jnp.zeros((1, *IMAGE)))
  state = flax_train_state.TrainState.create(apply_fn=MLP().apply, params=variables['params'],
                                             tx=ADAM)
  state, losses = train_losses(state, batches(15))
  assert isinstance(state, flax_train_state.TrainState)
  assert np.mean(losses[-3:]) < losses[0] / 2, losses

  # Flax's ImageNet example keeps batch_stats in a field of its own.
  class WithBatchStats(flax_train_state.TrainState):
    batch_stats: dict

  variables = BatchNormMLP().init(jax.random.key(0), jnp.zeros((1, *IMAGE)), train=False)
  state = WithBatchStats.create(apply_fn=BatchNormMLP().apply, params=variables['params'],
                                batch_stats=variables['batch_stats'], tx=ADAM)
  before = host(state.batch_stats)
  state, _ = train_losses(state, batches(2))
  assert not np.array_equal(before['BatchNorm_0']['mean'], state.batch_stats['BatchNorm_0']['mean'])
  assert_evaluation_uses_running_averages(state)

  # Without a key, a dropout model cannot train, and the error says why.
  variables = LinenCNN().init(jax.random.key(0), jnp.zeros((1, *IMAGE)))
  keyless = WithBatchStats.create(apply_fn=LinenCNN().apply, params=variables['params'],
                                  batch_stats=variables['batch_stats'], tx=ADAM)
  with pytest.raises(ValueError, match='holds no key.*create_train_state'):
    lenet_jax.train_step(keyless, batches(1)[0])


def test_donation_deletes_the_input_state_unless_donate_is_false():
  batch = batches(1)[0]
  initial = linen_state(ADAM)
  train_step, _ = lenet_jax.make_train_step(donate=False)
  a, _ = train_step(initial, batch)
  b, _ = train_step(initial, batch)  # two runs from one state
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, **repeatable())
  assert not any(x.is_deleted() for x in jax.tree.leaves(initial.params))
  lenet_jax.train_step(initial, batch)  # the default donates
  assert all(x.is_deleted() for x in jax.tree.leaves(initial.params))


def test_the_steps_compose_inside_scan_and_vmap():
  data = batches(4)
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *data)
  one_by_one, losses = train_losses(linen_state(ADAM), data)
  scanned, metrics = jax.jit(lambda s, b: jax.lax.scan(lenet_jax.train_step, s, b))(
      linen_state(ADAM), stacked)
  np.testing.assert_allclose(metrics['loss'], losses, **float_tolerance(rtol=1e-5))
  two = train.stack([linen_state(ADAM, seed) for seed in (0, 1)])
  two, metrics = jax.vmap(lenet_jax.train_step, in_axes=(0, None))(two, data[0])
  atol = float_tolerance(atol=1e-5)['atol']
  assert metrics['loss'].shape == (2,) and abs(float(metrics['loss'][0]) - losses[0]) < atol


def test_checkpoints_keep_the_state_key(tmp_path):
  saved, _ = lenet_jax.train_step(linen_state(ADAM, seed=1), batches(1)[0])
  group = lambda state: {'state': state_arrays(train.stack([state])),
                         'best': train.stack([state.params])}
  checkpoints = GroupCheckpoints(str(tmp_path), ['run'])
  checkpoints.save(group(saved), [1], [[{'epoch': 1}]])
  restored, done, _ = checkpoints.restore(1, group(linen_state(ADAM, seed=2)))
  checkpoints.close()
  assert done == [1]
  np.testing.assert_array_equal(jax.random.key_data(restored['state']['key'][0]),
                                jax.random.key_data(saved.key))


class FlaxExampleCNN(nn.Module):
  """The CNN of Flax's MNIST example (Linen): two conv + average pool blocks, two dense."""

  @nn.compact
  def __call__(self, x):
    x = nn.avg_pool(nn.relu(nn.Conv(32, (3, 3))(x)), (2, 2), (2, 2))
    x = nn.avg_pool(nn.relu(nn.Conv(64, (3, 3))(x)), (2, 2), (2, 2))
    x = nn.relu(nn.Dense(256)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(x)


def one_hot_cross_entropy(logits, labels):
  """The example's formula: softmax cross entropy against one-hot labels."""
  return optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, 10))


@jax.jit
def example_apply_model(state, images, labels):
  """The example's step, part one: loss and gradients."""
  def loss_fn(params):
    logits = state.apply_fn({'params': params}, images)
    return jnp.mean(one_hot_cross_entropy(logits, labels)), logits
  (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  return grads, loss


@jax.jit
def example_update_model(state, grads):
  """The example's step, part two: the optimizer update."""
  return state.apply_gradients(grads=grads)


@pytest.mark.cpu_bitwise
def test_flax_mnist_example_step_and_ours_agree_bitwise():
  data = batches(12)
  images = [b['image'].astype(np.float32) / 255.0 for b in data]  # scaled as the example does
  params = FlaxExampleCNN().init(jax.random.key(0), jnp.ones((1, *IMAGE)))['params']
  make = lambda: flax_train_state.TrainState.create(
      apply_fn=FlaxExampleCNN().apply, params=params, tx=optax.sgd(0.1, momentum=0.9))
  theirs, ours = make(), make()
  train_step, _ = lenet_jax.make_train_step(loss_fn=one_hot_cross_entropy)
  for image, batch in zip(images, data):
    grads, their_loss = example_apply_model(theirs, image, batch['label'])
    theirs = example_update_model(theirs, grads)
    ours, metrics = train_step(ours, {'image': image, 'label': batch['label']})
    assert float(metrics['loss']) == float(their_loss)
  for x, y in zip(jax.tree.leaves(ours.params), jax.tree.leaves(theirs.params)):
    np.testing.assert_array_equal(x, y)


EXAMPLES = sorted(f for f in os.listdir(os.path.join(ROOT, 'examples')) if f.endswith('.py'))


def test_the_readme_shows_every_example_as_it_is():
  # The Python API's page (docs/api.md) shows each of examples/*.py verbatim.
  api = open(os.path.join(ROOT, 'docs', 'api.md')).read()
  blocks = re.findall(r'```python\n(.*?)```', api, re.S)
  assert len(EXAMPLES) == 3
  for name in EXAMPLES:
    assert open(os.path.join(ROOT, 'examples', name)).read() in blocks, name


@pytest.mark.parametrize('name', EXAMPLES)
def test_the_examples_run(name, capsys):
  runpy.run_path(os.path.join(ROOT, 'examples', name), run_name='__main__')
  assert re.search(r'train loss \d+\.\d+', capsys.readouterr().out)
