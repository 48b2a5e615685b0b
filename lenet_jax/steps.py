"""Train and eval steps for anyone's model, built from a few choices.

`make_train_step(...)` returns jit-compiled `(train_step, eval_step)`:

    train_step(state, batch) -> (state, {'loss', 'correct', 'count'})
    eval_step(state, batch) -> {'loss_sum', 'correct', 'count'}

The state may be a `lenet_jax.TrainState` (Linen, with batch statistics and a
key), Flax's own `flax.training.train_state.TrainState` (or a subclass with a
`batch_stats` field, as in Flax's ImageNet example), or a
`lenet_jax.NNXTrainState` (a Flax NNX module as pytrees).

What the steps do for the model:
  mode   The model is told whether it trains, in training and in evaluation,
         through the argument of its `__call__` that names the mode (found by
         its name: 'train', 'training', 'is_training', or the inverted
         'deterministic', 'use_running_average'), so dropout and batch norm
         behave without the model's defaults mattering. NNX modules are also
         put in `.train()`/`.eval()` mode.
  keys   Training step t of a Linen model passes it
         `rngs=dict(zip(rng_collections, jax.random.split(fold_in(state.key, t),
         len(rng_collections))))`: collection i (default: only 'dropout') gets
         piece i of step t's key (`step_keys` computes them), so the step stays
         a pure function of the state and a run is reproducible. Evaluation
         passes no keys. NNX modules draw from their own `nnx.Rngs` streams,
         whose counts live in the state and advance every step.
  loss   `loss_fn(outputs, labels)` gets the model's whole output (an array, a
         tuple, a dict) and returns one loss per example; training minimises
         their mean, evaluation sums them.
  mask   An optional boolean batch['mask'], shape (B,): False marks a padding
         row. Training takes the mean loss over the True rows and counts only
         them; evaluation sums over them. The model still sees every row, so
         batch norm's batch statistics include padding (pad with real examples
         there). Other dtypes are refused: write `mask=weights > 0` to mean it.
  correct  Counted where it means something: logits of two or more classes
         per example, with integer labels of their batch shape (class indices)
         or labels of their own shape (one-hot or soft). Otherwise (regression
         targets, one output per example) the metrics have no 'correct'.

The default choices are `lenet_jax.train_step`/`eval_step`: integer labels,
softmax cross entropy, uint8 images scaled to [0, 1] on the device.
"""
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lenet_jax import nnx_state

# Names a model's call may give its mode argument: True means training...
TRAIN_FLAGS = ('train', 'training', 'is_training')
# ...or, for these (Flax's Dropout and BatchNorm spell it so), evaluation.
EVAL_FLAGS = ('deterministic', 'use_running_average')


def to_float(images):
  """uint8 images -> float32 in [0, 1]; float images pass through."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(jnp.float32) / 255.0
  return images


def _describe(call) -> str:
  owner = getattr(call, '__self__', None)
  name = type(owner).__name__ if owner is not None else getattr(call, '__name__', repr(call))
  try:
    return f'{name}.__call__{inspect.signature(call)}'
  except (TypeError, ValueError):
    return name


def model_call(apply_fn: Callable) -> Callable:
  """The model's own `__call__` behind a Linen `module.apply` (or `apply_fn` itself)."""
  module = getattr(apply_fn, '__self__', None)
  return module.__call__ if isinstance(module, nn.Module) else apply_fn


def _looks_boolean(parameter: inspect.Parameter) -> bool:
  """Annotated bool (or bool | None), or a True/False default."""
  annotation = parameter.annotation
  if isinstance(annotation, str):
    return annotation.replace(' ', '') in ('bool', 'bool|None', 'Optional[bool]')
  if annotation is bool or isinstance(parameter.default, bool):
    return True
  return bool(typing.get_args(annotation)) and set(typing.get_args(annotation)) <= {
      bool, type(None)}


def mode_kwargs(call: Callable, mode_arg: str | None, training: bool,
                strict: bool = True) -> dict[str, bool]:
  """The keyword argument that tells the model `call` whether it trains.

  mode_arg='auto' finds it among TRAIN_FLAGS and EVAL_FLAGS in `call`'s
  signature (none found: the model has no mode, nothing is passed; but with
  `strict`, the Linen case, an argument that looks boolean and is not among
  them is an error, since a model trained without being told so keeps
  dropout off silently; NNX modules are switched by .train()/.eval()); a name
  is passed as given and must be an argument of `call`; None passes nothing.
  """
  if mode_arg is None:
    return {}
  try:
    parameters = inspect.signature(call).parameters
  except (TypeError, ValueError):  # not inspectable: trust a name, find nothing
    parameters = None
  by_name = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
  if mode_arg == 'auto':
    found = [name for name in TRAIN_FLAGS + EVAL_FLAGS
             if parameters is not None and name in parameters
             and parameters[name].kind in by_name]
    if len(found) > 1:
      raise ValueError(f'{_describe(call)} takes several mode arguments {found}; name the '
                       f"one that means training: make_train_step(mode_arg={found[0]!r}).")
    if not found:
      unmatched = [name for name, p in (parameters or {}).items()
                   if strict and p.kind in by_name and _looks_boolean(p)]
      if unmatched:
        raise ValueError(
            f'{_describe(call)} takes {", ".join(map(repr, unmatched))}, which looks like '
            "a switch, but mode_arg='auto' recognises only "
            f'{", ".join(TRAIN_FLAGS)} (True: training) and {", ".join(EVAL_FLAGS)} (True: '
            f'evaluation). If it sets training mode, name it: make_train_step(mode_arg='
            f'{unmatched[0]!r}) and create_train_state(..., mode_arg={unmatched[0]!r}); if '
            'the model has no mode, mode_arg=None.')
      return {}
    name = found[0]
  else:
    name = mode_arg
    takes_any = parameters is None or any(
        p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if not takes_any and (name not in parameters or parameters[name].kind not in by_name):
      raise ValueError(f'mode_arg={name!r}, but {_describe(call)} takes no argument '
                       f'{name!r}; name the one that sets its mode, or mode_arg=None for '
                       'a model without modes.')
  return {name: (not training) if name in EVAL_FLAGS else training}


def _collections(state) -> dict[str, Any]:
  """The model's non-trainable Linen collections (batch_stats) held by `state`."""
  if hasattr(state, 'model_state'):
    return state.model_state
  if hasattr(state, 'batch_stats'):  # Flax's ImageNet-style TrainState subclass
    return {'batch_stats': state.batch_stats}
  return {}


def _with_collections(state, collections) -> dict[str, Any]:
  """apply_gradients' keyword arguments that store updated `collections` in `state`."""
  if hasattr(state, 'model_state'):
    return {'model_state': collections}
  if hasattr(state, 'batch_stats'):
    return {'batch_stats': collections['batch_stats']}
  return {}


def _linen_apply(state, params, inputs, training: bool, mode_arg, rng_collections):
  """(outputs, collections) of a Linen model's apply_fn, in the given mode."""
  collections = _collections(state)
  mode = mode_kwargs(model_call(state.apply_fn), mode_arg, training)
  kwargs = dict(mode)
  key = getattr(state, 'key', None)
  if training and key is not None and rng_collections:
    kwargs['rngs'] = step_keys(key, state.step, rng_collections)
  variables = {'params': params, **collections}
  try:
    if training and collections:
      return state.apply_fn(variables, inputs, mutable=list(collections), **kwargs)
    return state.apply_fn(variables, inputs, **kwargs), collections
  except flax.errors.InvalidRngError as e:
    if not training:
      fix = (f'evaluation draws no random numbers, but the model still does when called '
             f'with {mode or "no mode argument"}: name its mode argument with mode_arg=.')
    elif key is None:
      fix = (f'{type(state).__name__} holds no key: create the state with '
             'lenet_jax.create_train_state, or lenet_jax.TrainState.create(..., '
             'key=jax.random.key(0)).')
    else:
      fix = (f'the steps make keys for rng_collections={tuple(rng_collections)}; add the '
             'collection the model draws from.')
    raise ValueError(f'{e}: {fix}') from e
  except flax.errors.ModifyScopeVariableError as e:
    if training:
      raise
    raise ValueError(f'{e}: evaluation called the model with {mode or "no mode argument"} '
                     'and it still updates its statistics; name its mode argument with '
                     'mode_arg=.') from e


def _apply(state, params, inputs, training: bool, mode_arg, rng_collections):
  if isinstance(state, nnx_state.NNXTrainState):
    # NNX modules are switched by .train()/.eval(): a boolean argument of theirs
    # that is not a known mode name is the model's own business.
    return nnx_state.apply(state, params, inputs, training,
                           lambda call: mode_kwargs(call, mode_arg, training, strict=False))
  return _linen_apply(state, params, inputs, training, mode_arg, rng_collections)


def step_keys(key: jax.Array, step, rng_collections: Sequence[str] = ('dropout',)
              ) -> dict[str, jax.Array]:
  """The `rngs` a Linen model gets in training step `step` of a state holding `key`."""
  if not rng_collections:
    return {}
  pieces = jax.random.split(jax.random.fold_in(key, step), len(rng_collections))
  return dict(zip(rng_collections, pieces))


def counts_correct(logits, labels) -> bool:
  """Whether labels are classes the logits can be right about (see `correct` above)."""
  if not isinstance(logits, jax.Array) or logits.ndim < 2 or logits.shape[-1] < 2:
    return False  # one output per example: nothing to pick a top class from
  if jnp.issubdtype(labels.dtype, jnp.integer) and labels.shape == logits.shape[:-1]:
    return True
  return labels.shape == logits.shape


def _correct(logits, labels):
  """Per example: whether the top class is the label (or the top class of soft labels)."""
  if labels.ndim == logits.ndim:  # one-hot or soft labels
    labels = jnp.argmax(labels, -1)
  return jnp.argmax(logits, -1) == labels


def _mask(batch, count: int, label_key: str):
  """batch['mask'] checked (boolean, one per example), or None without one."""
  if 'mask' not in batch:
    return None
  mask = jnp.asarray(batch['mask'])
  if mask.dtype != jnp.bool_:
    raise ValueError(f"batch['mask'] has dtype {mask.dtype}; it must be boolean, True for the "
                     "examples that count (a padding row is False): pass e.g. "
                     "batch['mask'] = weights > 0.")
  if mask.shape != (count,):
    raise ValueError(f"batch['mask'] has shape {mask.shape}; it must have one entry per "
                     f"example of batch[{label_key!r}], shape ({count},).")
  return mask


class BatchKeyError(KeyError):
  """A batch without the key the steps read; says which keys it has."""

  def __str__(self):
    return str(self.args[0])


def _get(batch, key: str, role: str, flag: str):
  try:
    return batch[key]
  except (KeyError, TypeError, IndexError):
    keys = ', '.join(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
    raise BatchKeyError(f'the batch has no {key!r} (its {role}); its keys are {keys}. Name '
                        f"the batch's keys with make_train_step({flag}=...).") from None


def step_functions(loss_fn: Callable = optax.softmax_cross_entropy_with_integer_labels,
                   logits_fn: Callable | None = None,
                   rng_collections: Sequence[str] = ('dropout',),
                   mode_arg: str | None = 'auto',
                   input_key: str = 'image', label_key: str = 'label',
                   preprocess: Callable | None = to_float):
  """`make_train_step`'s steps before jit: for use inside a scan of one's own."""
  if isinstance(rng_collections, str):
    raise TypeError(f'rng_collections={rng_collections!r} must be a sequence of names, '
                    f'e.g. ({rng_collections!r},).')
  prepare = preprocess if preprocess is not None else (lambda x: x)

  def losses_and_logits(outputs, labels):
    losses = loss_fn(outputs, labels)
    if losses.shape != labels.shape[:1]:
      raise ValueError(f'loss_fn returned shape {losses.shape} for a batch of '
                       f'{labels.shape[0]}; it must return one loss per example, shape '
                       f'({labels.shape[0]},), e.g. optax.softmax_cross_entropy_with_'
                       'integer_labels(logits, labels) rather than its mean.')
    logits = outputs if logits_fn is None else logits_fn(outputs)
    if logits is not None and not isinstance(logits, jax.Array):
      raise ValueError(f'the model returns a {type(outputs).__name__}, not logits; pass '
                       'make_train_step(logits_fn=...) picking them, e.g. '
                       'logits_fn=lambda outputs: outputs[0], to count correct answers '
                       '(or logits_fn=lambda outputs: None to count none).')
    return losses, logits

  def inputs_and_labels(batch):
    inputs = _get(batch, input_key, 'inputs', 'input_key')
    labels = jnp.asarray(_get(batch, label_key, 'labels', 'label_key'))
    raw = jnp.asarray(inputs)
    return raw, prepare(raw), labels

  def call(state, params, raw, inputs, training):
    try:
      return _apply(state, params, inputs, training, mode_arg, rng_collections)
    except ValueError as e:
      if (preprocess is to_float and jnp.issubdtype(raw.dtype, jnp.integer)
          and 'must be an integer' in str(e)):
        raise ValueError(f'{e} The default preprocess scales integer inputs (uint8 images) '
                         f'to floats in [0, 1], so batch[{input_key!r}] ({raw.dtype}) '
                         'reached the model as floats; for integer token inputs pass '
                         'make_train_step(preprocess=None).') from e
      raise

  def train_step(state, batch):
    raw, inputs, labels = inputs_and_labels(batch)
    mask = _mask(batch, labels.shape[0], label_key)

    def loss(params):
      outputs, collections = call(state, params, raw, inputs, True)
      losses, logits = losses_and_logits(outputs, labels)
      if mask is None:  # the program stays the one without masks
        return losses.mean(), (logits, collections)
      total = jnp.sum(jnp.where(mask, losses, 0.0))
      return total / jnp.maximum(jnp.sum(mask), 1), (logits, collections)

    (loss_value, (logits, collections)), grads = jax.value_and_grad(loss, has_aux=True)(
        state.params)
    if isinstance(state, nnx_state.NNXTrainState):
      state = state.apply_gradients(grads=grads, model_state=collections)
    else:
      state = state.apply_gradients(grads=grads, **_with_collections(state, collections))
    metrics = {'loss': loss_value}
    if counts_correct(logits, labels):
      right = _correct(logits, labels)
      metrics['correct'] = jnp.sum(right if mask is None else right & mask)
    metrics['count'] = (jnp.asarray(labels.shape[0], jnp.int32) if mask is None
                        else jnp.sum(mask.astype(jnp.int32)))
    return state, metrics

  def eval_step(state, batch):
    """Sums and counts over the examples whose batch['mask'] is true (all, if absent)."""
    raw, inputs, labels = inputs_and_labels(batch)
    mask = _mask(batch, labels.shape[0], label_key)
    if mask is None:
      mask = jnp.ones(labels.shape[:1], bool)
    outputs, _ = call(state, state.params, raw, inputs, False)
    losses, logits = losses_and_logits(outputs, labels)
    sums = {'loss_sum': jnp.sum(jnp.where(mask, losses, 0.0))}
    if counts_correct(logits, labels):
      sums['correct'] = jnp.sum(_correct(logits, labels) & mask)
    sums['count'] = jnp.sum(mask.astype(jnp.int32))
    return sums

  return train_step, eval_step


def make_train_step(loss_fn: Callable = optax.softmax_cross_entropy_with_integer_labels,
                    logits_fn: Callable | None = None,
                    rng_collections: Sequence[str] = ('dropout',),
                    mode_arg: str | None = 'auto',
                    input_key: str = 'image', label_key: str = 'label',
                    preprocess: Callable | None = to_float,
                    donate: bool = True):
  """Jit-compiled `(train_step, eval_step)` for the given choices.

  Args:
    loss_fn: `loss_fn(outputs, labels)` -> one loss per example, shape (B,).
      `outputs` is whatever the model returns; `labels` is batch[label_key]
      (integers, one-hot or soft labels).
    logits_fn: picks the class scores out of the outputs to count correct
      answers (e.g. `lambda outputs: outputs[0]`; one returning None counts
      none); None: the outputs are them.
    rng_collections: the Linen RNG collections given a fresh key each
      training step (none in evaluation). NNX modules use their own Rngs.
    mode_arg: the model's argument that sets training or evaluation mode;
      'auto' finds it by name, None passes none (see `mode_kwargs`).
    input_key, label_key: where the batch dict holds inputs and labels; the
      optional boolean batch['mask'] selects the examples that count, in
      training and evaluation (see the module docstring).
    preprocess: applied to the inputs on the device; the default scales
      integer (uint8 image) inputs to [0, 1], None passes them as they are
      (integer token inputs, or images already scaled).
    donate: let train_step reuse the input state's memory for the new state.
      The state passed in is then deleted ("Array has been deleted" if used
      again); donate=False keeps it, to start two runs from one state or
      keep the initial parameters.

  Each call compiles new functions: make the steps once, call them often.
  """
  train_step, eval_step = step_functions(loss_fn, logits_fn, rng_collections, mode_arg,
                                         input_key, label_key, preprocess)
  return (jax.jit(train_step, donate_argnums=0 if donate else ()),
          jax.jit(eval_step))
