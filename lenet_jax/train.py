"""Pure training and evaluation over parameter pytrees.

`train_step` and `eval_step` work for any Flax module and any optax
transformation, so another experiment can import them with its own model:

    state = create_train_state(my_module, optax.adam(1e-3), key, (28, 28, 1))
    state, metrics = train_step(state, {'image': x, 'label': y})

Images may be uint8 (scaled to [0, 1] here, on the device) or float. Models
with mutable collections (batch norm's 'batch_stats') are called with
`train=True` and those collections mutable during training.

On top of the steps, `train_epoch` runs a whole epoch (shuffle, batch, steps)
inside one compiled `lax.scan`, with the dataset resident on the device, and
`evaluate` scans over padded, masked batches so every example counts once.
Both have `_many` variants, vmapped over a leading model axis: models that
differ only in seed or numeric hyperparameters train in one program.
"""
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import PartitionSpec


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the model's non-trainable collections (batch_stats)."""
  model_state: Any = flax.struct.field(default_factory=dict)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       key: jax.Array, input_shape) -> TrainState:
  """Initialises `model` for images of `input_shape` (H, W, C)."""
  variables = model.init(key, jnp.zeros((1, *input_shape), jnp.float32))
  variables = flax.core.unfreeze(variables)
  params = variables.pop('params')
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           model_state=variables)


def to_float(images):
  """uint8 images -> float32 in [0, 1]; float images pass through."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(jnp.float32) / 255.0
  return images


def _logits(state: TrainState, params, images, train: bool):
  variables = {'params': params, **state.model_state}
  if train and state.model_state:
    return state.apply_fn(variables, images, train=True,
                          mutable=list(state.model_state))
  return state.apply_fn(variables, images), state.model_state


def _train_step(state: TrainState, batch):
  images, labels = to_float(batch['image']), batch['label']

  def loss_fn(params):
    logits, model_state = _logits(state, params, images, train=True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (logits, model_state)

  (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  state = state.apply_gradients(grads=grads, model_state=model_state)
  metrics = {'loss': loss, 'correct': jnp.sum(jnp.argmax(logits, -1) == labels),
             'count': jnp.asarray(labels.shape[0], jnp.int32)}
  return state, metrics


def _eval_step(state: TrainState, batch):
  """Sums and counts over the examples whose batch['mask'] is true (all, if absent)."""
  images, labels = to_float(batch['image']), batch['label']
  mask = batch.get('mask', jnp.ones(labels.shape, bool))
  logits, _ = _logits(state, state.params, images, train=False)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {'loss_sum': jnp.sum(jnp.where(mask, losses, 0.0)),
          'correct': jnp.sum((jnp.argmax(logits, -1) == labels) & mask),
          'count': jnp.sum(mask.astype(jnp.int32))}


# Compiled once per model and optimizer; the state is donated.
train_step = jax.jit(_train_step, donate_argnums=0)
eval_step = jax.jit(_eval_step)


def _train_epoch(state: TrainState, images, labels, key, batch_size: int,
                 batch_sharding=None):
  """One epoch in one program: a fresh permutation, full batches, scanned steps.

  `batch_sharding` (a NamedSharding of the batch axis) splits every batch over
  devices: data parallelism, with XLA summing the gradients across them.
  """
  steps = images.shape[0] // batch_size  # the remainder batch is dropped
  order = jax.random.permutation(key, images.shape[0])[:steps * batch_size]

  def body(state, idx):
    batch = {'image': images[idx], 'label': labels[idx]}
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return _train_step(state, batch)

  state, metrics = jax.lax.scan(body, state, order.reshape(steps, batch_size))
  # Full batches of equal size, so the mean of batch means is the epoch mean.
  return state, {'loss': metrics['loss'].mean(), 'correct': metrics['correct'].sum(),
                 'count': metrics['count'].sum()}


def _evaluate(state: TrainState, images, labels, batch_size: int):
  """Loss and accuracy sums over all of `images`, the last batch padded and masked."""
  n = images.shape[0]
  batches = -(-n // batch_size)
  pad = batches * batch_size - n
  mask = jnp.arange(batches * batch_size) < n
  images = jnp.pad(images, ((0, pad),) + ((0, 0),) * (images.ndim - 1))
  labels = jnp.pad(labels, (0, pad))

  def body(totals, batch):
    sums = _eval_step(state, batch)
    return jax.tree.map(jnp.add, totals, sums), None

  reshape = lambda x: x.reshape(batches, batch_size, *x.shape[1:])
  zeros = {'loss_sum': jnp.zeros((), jnp.float32), 'correct': jnp.zeros((), jnp.int32),
           'count': jnp.zeros((), jnp.int32)}
  totals, _ = jax.lax.scan(body, zeros, {'image': reshape(images),
                                         'label': reshape(labels), 'mask': reshape(mask)})
  return totals


train_epoch = jax.jit(_train_epoch, static_argnames=('batch_size', 'batch_sharding'),
                      donate_argnums=0)
evaluate = jax.jit(_evaluate, static_argnames='batch_size')
# A leading model axis on the state and the key; the data is shared.
train_epoch_many = jax.jit(
    jax.vmap(_train_epoch, in_axes=(0, None, None, 0, None)),
    static_argnums=4, donate_argnums=0)
evaluate_many = jax.jit(jax.vmap(_evaluate, in_axes=(0, None, None, None)),
                        static_argnums=3)


def many_over_devices(mesh, batch_size: int, eval_batch_size: int):
  """(train_epoch, evaluate) over models split along `mesh`'s 'models' axis.

  The same functions as `train_epoch_many`/`evaluate_many`, but under
  `shard_map`: every device trains and evaluates its own slice of the models
  with no communication at all, so custom calls inside (the native CPU
  kernels, which XLA cannot partition) run on local shapes instead of being
  gathered and repeated on every device. Arguments as for the `_many`
  functions, without the batch sizes.
  """
  models, shared = PartitionSpec('models'), PartitionSpec()
  epoch = jax.vmap(functools.partial(_train_epoch, batch_size=batch_size),
                   in_axes=(0, None, None, 0))
  evaluate_ = jax.vmap(functools.partial(_evaluate, batch_size=eval_batch_size),
                       in_axes=(0, None, None))
  # check_vma=False: custom calls do not carry shard_map's per-axis type
  # annotations, and nothing here crosses devices anyway.
  shard = functools.partial(jax.shard_map, mesh=mesh, out_specs=models, check_vma=False)
  return (jax.jit(shard(epoch, in_specs=(models, shared, shared, models)), donate_argnums=0),
          jax.jit(shard(evaluate_, in_specs=(models, shared, shared))))


def stack(trees):
  """Stacks pytrees of equal structure along a new leading (model) axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, index: int):
  return jax.tree.map(lambda x: x[index], tree)

