"""The one validation of a configuration, used by every entry point.

`check_model` is called by `model.LeNet5` itself, so a network built directly
from Python is held to the same rules as one built from the command line;
`check_config` adds the optimizer, data and run fields and is called by the
CLI, the sweep runner, the training loop and the experiments before anything
is compiled. Every error is a ValueError that names the field, its value and
the fix. Cheap: nothing is traced (the native library is compiled once per
machine, if it is asked for and missing).
"""
import math
from typing import Any

from lenet_jax import arch
from lenet_jax import config as config_lib
from lenet_jax import conv
from lenet_jax import data as data_lib
from lenet_jax import native
from lenet_jax.config import Config, ModelConfig

# jax.random.key keeps the low 32 bits of a seed, so larger seeds would repeat
# smaller ones (2**32 gives seed 0's key).
MAX_SEED = 2**32 - 1


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
  if value not in allowed:
    raise ValueError(f'{name}={value!r} is not one of {allowed}.')


def _positive_int(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f'{name}={value!r} must be a positive integer.')


def _finite(name: str, value: Any) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ValueError(f'{name}={value!r} must be a finite number.')
  return float(value)


def check_model(m: ModelConfig) -> list[arch.Layer]:
  """Raises ValueError for a network that cannot be built; returns its layer trace."""
  _choice('model.activation', m.activation, config_lib.ACTIVATIONS)
  _choice('model.pool', m.pool, config_lib.POOLS)
  _choice('model.normalization', m.normalization, config_lib.NORMALIZATIONS)
  _choice('model.conv_reduction', m.conv_reduction, config_lib.CONV_REDUCTIONS)
  _choice('model.init', m.init, config_lib.INITS)
  _choice('model.conv_impl', m.conv_impl, conv.CONV_IMPLS)
  _choice('model.head', m.head, config_lib.HEADS)
  _choice('model.precision', m.precision, config_lib.PRECISIONS)
  if not isinstance(m.inner_activation, bool):
    raise ValueError(f'model.inner_activation={m.inner_activation!r} must be True or False '
                     '(on the command line: true or false).')
  if not _finite('model.conv_init_scale', m.conv_init_scale) > 0:
    raise ValueError(f'model.conv_init_scale={m.conv_init_scale!r} must be > 0: it '
                     'multiplies the initial conv kernels (1 keeps the initialiser).')
  if m.conv_impl == 'native' and m.precision == 'bfloat16':
    conv.resolve_impl(m.conv_impl, precision=m.precision)  # the error: native is float32
  if m.conv_impl == 'native' and (reason := native.available()) is not None:
    raise ValueError(f"model.conv_impl='native' cannot run here: {reason} "
                     "Use conv_impl='auto' or 'patches'.")
  if not m.channels:
    raise ValueError('model.channels is empty: give at least one conv block, e.g. 6,16.')
  positives = [('model.num_classes', m.num_classes), ('model.pool_size', m.pool_size)]
  positives += [(f'model.channels[{i}]', c) for i, c in enumerate(m.channels)]
  positives += [(f'model.dense[{i}]', c) for i, c in enumerate(m.dense)]
  positives += [(f'model.convs_per_block[{i}]', c) for i, c in enumerate(m.convs_per_block)]
  if len(m.input_shape) != 3:
    raise ValueError(f'model.input_shape={m.input_shape!r} must be (height, width, channels).')
  positives += [(f'model.input_shape[{i}]', c) for i, c in enumerate(m.input_shape)]
  for name, value in positives:
    _positive_int(name, value)
  for i, k in enumerate(m.kernel_size):
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 11:
      raise ValueError(f'model.kernel_size[{i}]={k!r} must be an integer in 1..11.')
  for i, p in enumerate(m.padding):
    if not (p in ('same', 'valid') or (isinstance(p, int) and not isinstance(p, bool)
                                       and p >= 0)):
      raise ValueError(f"model.padding[{i}]={p!r} must be 'same', 'valid' or a "
                       'non-negative integer (pixels on each side).')
  blocks = m.blocks()  # per-block fields agree with the number of blocks
  if not m.inner_activation and all(convs == 1 for *_, convs in blocks):
    raise ValueError(f'model.inner_activation=False has no effect: no block stacks convs '
                     f'(convs_per_block={m.convs_per_block}). Set convs_per_block >= 2 '
                     'for some block, or leave inner_activation=True.')
  return arch.trace(m)  # an impossible architecture fails here, before compiling


def _check_optim(cfg: Config, layers: list[arch.Layer]) -> None:
  o = cfg.optim
  _choice('optim.optimizer', o.optimizer, config_lib.OPTIMIZERS)
  _choice('optim.schedule', o.schedule, config_lib.SCHEDULES)
  if not _finite('optim.learning_rate', o.learning_rate) > 0:
    raise ValueError(f'optim.learning_rate={o.learning_rate!r} must be > 0.')
  if not 0 <= _finite('optim.momentum', o.momentum) < 1:
    raise ValueError(f'optim.momentum={o.momentum!r} must be in [0, 1).')
  if not _finite('optim.weight_decay', o.weight_decay) >= 0:
    raise ValueError(f'optim.weight_decay={o.weight_decay!r} must be >= 0.')
  if not 0 < _finite('optim.step_decay_factor', o.step_decay_factor) <= 1:
    raise ValueError(f'optim.step_decay_factor={o.step_decay_factor!r} must be in (0, 1]: '
                     'the learning rate is multiplied by it every step_decay_every epochs.')
  _positive_int('optim.step_decay_every', o.step_decay_every)
  if not _finite('optim.conv_lr_scale', o.conv_lr_scale) > 0:
    raise ValueError(f'optim.conv_lr_scale={o.conv_lr_scale!r} must be > 0 (to keep conv '
                     'layers at their initial values, name them in optim.frozen).')
  if o.frozen:
    names = [l.name for l in layers if l.params]
    unknown = [n for n in o.frozen if n not in names]
    if unknown:
      raise ValueError(f'optim.frozen names {unknown}, which are not layers with '
                       f'parameters of this model; choose from {names}.')


def _check_data(cfg: Config) -> None:
  d = cfg.data
  info = data_lib.dataset_info(d.dataset)
  _choice('data.source', d.source, data_lib.SOURCES)
  most = min(cfg.model.input_shape[:2]) - 1
  if (isinstance(d.augment_shift, bool) or not isinstance(d.augment_shift, int)
      or not 0 <= d.augment_shift <= most):
    raise ValueError(f'data.augment_shift={d.augment_shift!r} must be an integer in '
                     f'0..{most} (pixels, less than the {cfg.model.input_shape[0]}x'
                     f'{cfg.model.input_shape[1]} images); 0 turns the shifts off.')
  if d.validation_size is not None and (
      isinstance(d.validation_size, bool) or not isinstance(d.validation_size, int)
      or d.validation_size < 0):
    raise ValueError(f'data.validation_size={d.validation_size!r} must be an integer >= 0 '
                     "(or None for the dataset's default).")
  if cfg.model.num_classes < info.num_classes:
    raise ValueError(f'model.num_classes={cfg.model.num_classes} is smaller than the '
                     f'{info.num_classes} classes of dataset={d.dataset!r}: labels '
                     f'{cfg.model.num_classes}..{info.num_classes - 1} would have no '
                     f'output. Use num_classes={info.num_classes}.')


def check_config(cfg: Config) -> None:
  """Raises ValueError naming the bad value and the fix, for any field of a run."""
  for name in ('batch_size', 'eval_batch_size', 'epochs'):
    _positive_int(name, getattr(cfg, name))
  if (isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int)
      or not 0 <= cfg.seed <= MAX_SEED):
    raise ValueError(f'seed={cfg.seed!r} must be an integer in 0..{MAX_SEED} (JAX keeps '
                     'the low 32 bits of a seed, so larger ones would repeat smaller ones).')
  if cfg.patience is not None:
    if isinstance(cfg.patience, bool) or not isinstance(cfg.patience, int) or cfg.patience < 1:
      raise ValueError(f'patience={cfg.patience!r} must be a positive integer (epochs '
                       'without a better validation accuracy before a run stops), or None '
                       'to train every epoch.')
    if cfg.data.validation_size == 0:
      raise ValueError(f'patience={cfg.patience} stops a run by its validation accuracy, '
                       'but validation_size=0 leaves no validation set: give a '
                       'validation_size > 0, or leave patience unset.')
  layers = check_model(cfg.model)
  _check_optim(cfg, layers)
  _check_data(cfg)
