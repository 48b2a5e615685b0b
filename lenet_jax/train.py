"""Pure training and evaluation over parameter pytrees.

`train_step` and `eval_step` work for any Flax module and any optax
transformation, so another experiment can import them with its own model:

    state = create_train_state(my_module, optax.adam(1e-3), key, (28, 28, 1))
    state, metrics = train_step(state, {'image': x, 'label': y})

They are `steps.make_train_step()`'s defaults (integer labels, softmax cross
entropy, uint8 images scaled to [0, 1] on the device); other losses, outputs,
batch keys and inputs take `make_train_step(...)`. The model is called in
training or evaluation mode (its `train` argument, or what it calls it), with
its mutable collections (batch norm's 'batch_stats') updated in training and
a per-step dropout key from the state. `create_train_state` also takes a Flax
NNX module (see nnx_state.py).

On top of the steps, `train_epoch` runs a whole epoch (shuffle, batch, steps)
inside one compiled `lax.scan`, with the dataset resident on the device, and
`evaluate` scans over padded, masked batches so every example counts once.
Both have `_many` variants, vmapped over a leading model axis: models that
differ only in seed or numeric hyperparameters train in one program.
`epoch_and_evaluate` (and `_many`) is what the training loop runs: an epoch,
the evaluation of every split and the best-on-validation record, in one
program, so a group costs one compilation and one host sync per epoch.
`correct_each` (and `_many`) is `evaluate`'s forward pass kept per example:
whether each example's top class is its label.
"""
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.training import train_state
from jax.sharding import PartitionSpec

from lenet_jax import nnx_state
from lenet_jax import steps
from lenet_jax.steps import to_float  # noqa: F401  (importable from here, as before)


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the model's non-trainable collections and a key.

  `key` is the root of the steps' random numbers: training step t gives the
  model `steps.step_keys(key, t)` (`split(fold_in(key, t), n)`, one piece per
  RNG collection: 'dropout' alone by default), so a step is a pure function of
  the state. None (as in a state made by `TrainState.create` without one):
  the model gets no keys.
  """
  model_state: Any = flax.struct.field(default_factory=dict)
  key: Any = None


def create_train_state(model: nn.Module | nnx.Module, tx: optax.GradientTransformation,
                       key: jax.Array | None = None, input_shape=None, *,
                       input_dtype=jnp.float32, mode_arg: str | None = 'auto'):
  """Initialises a Linen `model` for inputs of `input_shape` (H, W, C), or wraps an NNX one.

  The Linen model is initialised in evaluation mode (see steps.mode_kwargs) on
  one example of zeros of `input_dtype` (an integer dtype for token inputs).
  The dropout key derives from `key` apart from the stream that initialised
  the parameters. An initialised `nnx.Module` takes neither key nor shape:
  `create_train_state(module, tx)` is `nnx_state.create_nnx_train_state`.
  """
  if isinstance(model, nnx.Module):
    if key is not None or input_shape is not None:
      raise ValueError('an nnx.Module is initialised already (its nnx.Rngs seed it): '
                       'call create_train_state(module, tx) without key or input_shape.')
    return nnx_state.create_nnx_train_state(model, tx)
  if isinstance(model, nnx.bridge.ToLinen):
    # Through the bridge an NNX module keeps whatever mode it was built in, and
    # its Rngs counts are not carried from step to step.
    raise ValueError('pass the NNX module itself, create_train_state(module, tx), not '
                     'nnx.bridge.to_linen(...): through the bridge batch norm would evaluate '
                     'with batch statistics and dropout repeat one mask every step.')
  if key is None or input_shape is None:
    raise ValueError(f'create_train_state({type(model).__name__}(...), tx, key, input_shape) '
                     'needs the key that initialises the model and the shape of one input, '
                     'e.g. (28, 28, 1).')
  eval_mode = steps.mode_kwargs(model.__call__, mode_arg, training=False)
  try:
    variables = model.init(key, jnp.zeros((1, *input_shape), input_dtype), **eval_mode)
  except ValueError as e:
    if 'must be an integer' not in str(e) or jnp.issubdtype(input_dtype, jnp.integer):
      raise
    raise ValueError(f'{e} The model takes integer inputs (tokens), but it was initialised '
                     f'on {jnp.dtype(input_dtype).name} zeros: pass create_train_state(..., '
                     'input_dtype=jnp.int32), and make_train_step(preprocess=None) so the '
                     'steps pass the integers as they are.') from e
  variables = flax.core.unfreeze(variables)
  params = variables.pop('params')
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           model_state=variables, key=jax.random.fold_in(key, 1))


# The default steps, compiled once per model and optimizer; the state is donated.
_train_step, _eval_step = steps.step_functions()
train_step = jax.jit(_train_step, donate_argnums=0)
eval_step = jax.jit(_eval_step)


def shift_batch(images, key, max_shift: int):
  """Each image translated by its own random (dy, dx) in [-max_shift, max_shift]^2.

  Image i moves to out[y, x] = images[i, y - dy, x - dx], the uncovered border
  filled with 0, as experiments/evaluation.py's shift_images. Any dtype; on the
  device.
  """
  s = max_shift
  height, width = images.shape[1:3]
  shifts = jax.random.randint(key, (images.shape[0], 2), -s, s + 1)
  padded = jnp.pad(images, ((0, 0), (s, s), (s, s)) + ((0, 0),) * (images.ndim - 3))

  def crop(image, shift):
    start = (s - shift[0], s - shift[1]) + (0,) * (image.ndim - 2)
    return jax.lax.dynamic_slice(image, start, (height, width) + image.shape[2:])

  return jax.vmap(crop)(padded, shifts)


def _train_epoch(state: TrainState, images, labels, key, batch_size: int,
                 batch_sharding=None, augment_shift: int = 0):
  """One epoch in one program: a fresh permutation, full batches, scanned steps.

  `batch_sharding` (a NamedSharding of the batch axis) splits every batch over
  devices: data parallelism, with XLA summing the gradients across them.
  `augment_shift` > 0: every training image is shifted at random (see
  `shift_batch`), by a key that is `key` folded with the step of the epoch.
  """
  steps = images.shape[0] // batch_size  # the remainder batch is dropped
  order = jax.random.permutation(key, images.shape[0])[:steps * batch_size]

  def body(state, xs):
    step, idx = xs if augment_shift else (None, xs)
    batch = {'image': images[idx], 'label': labels[idx]}
    if augment_shift:  # static: at 0 the program is the one without augmentation
      batch['image'] = shift_batch(batch['image'], jax.random.fold_in(key, step),
                                   augment_shift)
    if batch_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return _train_step(state, batch)

  batches = order.reshape(steps, batch_size)
  if augment_shift:
    batches = (jnp.arange(steps), batches)
  state, metrics = jax.lax.scan(body, state, batches)
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


def _correct_each(state: TrainState, images, labels, batch_size: int):
  """Per example of `images`: whether the model's top class is its label (bool, (n,)).

  The forward pass of `_evaluate`: the same padded batches of `batch_size`, the
  model called as `eval_step` calls it (evaluation mode, batch norm with its
  running statistics, images scaled by `to_float`), so the count of True is
  `_evaluate`'s 'correct' for the same state.
  """
  n = images.shape[0]
  batches = -(-n // batch_size)
  pad = batches * batch_size - n
  images = jnp.pad(images, ((0, pad),) + ((0, 0),) * (images.ndim - 1))
  labels = jnp.pad(labels, (0, pad))
  mode = steps.mode_kwargs(steps.model_call(state.apply_fn), 'auto', training=False)

  def body(carry, batch):
    variables = {'params': state.params, **state.model_state}
    logits = state.apply_fn(variables, to_float(batch['image']), **mode)
    return carry, jnp.argmax(logits, -1) == batch['label']

  reshape = lambda x: x.reshape(batches, batch_size, *x.shape[1:])
  _, right = jax.lax.scan(body, None, {'image': reshape(images), 'label': reshape(labels)})
  return right.reshape(-1)[:n]


train_epoch = jax.jit(_train_epoch, donate_argnums=0,
                      static_argnames=('batch_size', 'batch_sharding', 'augment_shift'))
evaluate = jax.jit(_evaluate, static_argnames='batch_size')
correct_each = jax.jit(_correct_each, static_argnames='batch_size')


def _select(keep_new, new, old):
  """`new` where `keep_new` (a scalar bool), else `old`, leaf by leaf."""
  return jax.tree.map(lambda n, o: jnp.where(keep_new, n, o), new, old)


def initial_best(state: TrainState):
  """The best-on-validation record of a run that has not trained: its start."""
  return {'params': state.params, 'model_state': state.model_state,
          'val_correct': jnp.asarray(-1, jnp.int32)}


def _epoch_and_evaluate(state: TrainState, best, active, images, labels, data_key, epoch,
                        splits, batch_size: int, eval_batch_size: int,
                        augment_shift: int = 0, batch_sharding=None):
  """One run's epoch `epoch` and its evaluation on every split, in one program.

  The epoch's data order is `fold_in(data_key, epoch)`, so a resumed run sees
  the order it would have. A run that is not `active` (stopped, diverged, or
  a padding slot of a stacked group) is computed but keeps its state.
  `best` ({'params', 'model_state', 'val_correct'}) is the model with the most
  correct validation answers so far, the earliest of ties; without a
  validation split it is the last model. `splits`: {name: (images, labels)}.
  Returns (state, best, train metrics, {split: eval sums}).
  """
  key = jax.random.fold_in(data_key, epoch)
  trained, metrics = _train_epoch(state, images, labels, key, batch_size, batch_sharding,
                                  augment_shift)
  state = _select(active, trained, state)
  evals = {name: _evaluate(state, x, y, eval_batch_size) for name, (x, y) in splits.items()}
  if 'val' in evals:
    better = active & (evals['val']['correct'] > best['val_correct'])
    correct = evals['val']['correct']
  else:
    better, correct = active, best['val_correct']
  best = _select(better, {'params': state.params, 'model_state': state.model_state,
                          'val_correct': correct}, best)
  return state, best, metrics, evals


_STATIC = ('batch_size', 'eval_batch_size', 'augment_shift', 'batch_sharding')
epoch_and_evaluate = jax.jit(_epoch_and_evaluate, static_argnames=_STATIC,
                             donate_argnums=(0, 1))


def _epoch_and_evaluate_many(states, bests, active, images, labels, data_keys, epoch, splits,
                             batch_size: int, eval_batch_size: int, augment_shift: int = 0):
  # A leading model axis on the states, bests, active flags and keys; the data is shared.
  one = functools.partial(_epoch_and_evaluate, batch_size=batch_size,
                          eval_batch_size=eval_batch_size, augment_shift=augment_shift)
  return jax.vmap(one, in_axes=(0, 0, 0, None, None, 0, None, None))(
      states, bests, active, images, labels, data_keys, epoch, splits)


epoch_and_evaluate_many = jax.jit(_epoch_and_evaluate_many,
                                  static_argnames=_STATIC[:3], donate_argnums=(0, 1))


def _train_epoch_many(states, images, labels, keys, batch_size: int, augment_shift: int = 0):
  # A leading model axis on the state and the key; the data is shared.
  epoch = functools.partial(_train_epoch, batch_size=batch_size, augment_shift=augment_shift)
  return jax.vmap(epoch, in_axes=(0, None, None, 0))(states, images, labels, keys)


train_epoch_many = jax.jit(_train_epoch_many, static_argnames=('batch_size', 'augment_shift'),
                           donate_argnums=0)
evaluate_many = jax.jit(jax.vmap(_evaluate, in_axes=(0, None, None, None)),
                        static_argnums=3)


correct_each_many = jax.jit(jax.vmap(_correct_each, in_axes=(0, None, None, None)),
                            static_argnums=3)


def correct_each_over_devices(mesh, batch_size: int):
  """`correct_each_many` over models split along `mesh`'s 'models' axis, each
  device its own models (as `many_over_devices`); arguments without the batch size."""
  models, shared = PartitionSpec('models'), PartitionSpec()
  fn = jax.vmap(functools.partial(_correct_each, batch_size=batch_size),
                in_axes=(0, None, None))
  return jax.jit(jax.shard_map(fn, mesh=mesh, check_vma=False,
                               in_specs=(models, shared, shared), out_specs=models))


def many_over_devices(mesh, batch_size: int, eval_batch_size: int, augment_shift: int = 0):
  """`epoch_and_evaluate_many` over models split along `mesh`'s 'models' axis.

  Under `shard_map`, every device trains and evaluates its own slice of the
  models with no communication at all, so custom calls inside (the native CPU
  kernels, which XLA cannot partition) run on local shapes instead of being
  gathered and repeated on every device. Arguments as for
  `epoch_and_evaluate_many`, without the static ones.
  """
  models, shared = PartitionSpec('models'), PartitionSpec()
  fn = functools.partial(_epoch_and_evaluate_many, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, augment_shift=augment_shift)
  # check_vma=False: custom calls do not carry shard_map's per-axis type
  # annotations, and nothing here crosses devices anyway.
  sharded = jax.shard_map(fn, mesh=mesh, check_vma=False,
                          in_specs=(models, models, models, shared, shared, models, shared,
                                    shared),
                          out_specs=models)
  return jax.jit(sharded, donate_argnums=(0, 1))


def stack(trees):
  """Stacks pytrees of equal structure along a new leading (model) axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, index: int):
  return jax.tree.map(lambda x: x[index], tree)

