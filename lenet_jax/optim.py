"""Optimizers and learning-rate schedules from an OptimConfig.

The numeric hyperparameters (learning rate, momentum, weight decay) live in
the optimizer *state* via `optax.inject_hyperparams`, not in the compiled
program, so models that differ only in them can be stacked and trained by one
vmapped program. The schedule is a multiplier applied after the optimizer;
every optimizer here ends in a multiplication by the learning rate, so this
is exactly a scheduled learning rate.
"""
import re

import jax
import optax

from lenet_jax.config import OptimConfig

# The OptimConfig fields that may differ between models trained together.
# (conv_lr_scale is not among them: it is a constant of the compiled program,
# so runs that differ in it are trained by different programs.)
NUMERIC_HYPERPARAMS = ('learning_rate', 'momentum', 'weight_decay')

# The parameter-tree names of the conv layers (arch.conv_name).
_CONV_MODULE = re.compile(r'block\d+_conv\d+')


def injected(cfg: OptimConfig) -> dict[str, float]:
  """The numeric hyperparameters that `cfg.optimizer` takes."""
  hyper = {'learning_rate': cfg.learning_rate}
  if cfg.optimizer == 'momentum':
    hyper['momentum'] = cfg.momentum
  if cfg.optimizer == 'adamw':
    hyper['weight_decay'] = cfg.weight_decay
  return hyper


def schedule_multiplier(cfg: OptimConfig, steps_per_epoch: int, epochs: int):
  """Step -> factor on the peak learning rate."""
  if cfg.schedule == 'constant':
    return optax.constant_schedule(1.0)
  if cfg.schedule == 'cosine':
    return optax.cosine_decay_schedule(1.0, decay_steps=max(1, steps_per_epoch * epochs))
  if cfg.schedule == 'step':
    return optax.exponential_decay(1.0, transition_steps=steps_per_epoch * cfg.step_decay_every,
                                   decay_rate=cfg.step_decay_factor, staircase=True)
  raise ValueError(f'schedule={cfg.schedule!r} is not one of constant, cosine, step.')


def make_optimizer(cfg: OptimConfig, steps_per_epoch: int, epochs: int):
  base = {'sgd': optax.sgd, 'momentum': optax.sgd, 'adam': optax.adam,
          'adamw': optax.adamw}
  if cfg.optimizer not in base:
    raise ValueError(f'optimizer={cfg.optimizer!r} is not one of {sorted(base)}.')
  frozen = set(cfg.frozen)
  modules = lambda which: lambda params: {
      name: jax.tree.map(lambda _: which(name), sub) for name, sub in params.items()}
  # conv_lr_scale multiplies the conv layers' final updates: with Adam, a
  # mean-conv (output / k^2) started from k^2 times the sum-conv's kernel and
  # given conv_lr_scale=k^2 follows the sum-conv's trajectory, up to Adam's
  # epsilon (with SGD, k^4). Left out at 1, so the default is unchanged.
  conv_scale = ([optax.masked(optax.scale(cfg.conv_lr_scale),
                              modules(lambda name: bool(_CONV_MODULE.fullmatch(name))))]
                if cfg.conv_lr_scale != 1 else [])
  return optax.chain(
      optax.inject_hyperparams(base[cfg.optimizer])(**injected(cfg)),
      optax.scale_by_schedule(schedule_multiplier(cfg, steps_per_epoch, epochs)),
      *conv_scale,
      # Frozen modules get zero updates (weight decay included), so they keep
      # their initial values exactly.
      optax.masked(optax.set_to_zero(), modules(lambda name: name in frozen)))


def hyperparams(opt_state) -> dict:
  """The injected hyperparameters of a state made by `make_optimizer` (mutable view)."""
  return opt_state[0].hyperparams


def replace_hyperparams(opt_state, values: dict):
  """`opt_state` with the injected hyperparameters in `values` replaced (any shape:
  one value per model of a stacked state)."""
  inject = opt_state[0]
  return (inject._replace(hyperparams={**inject.hyperparams, **values}),) + tuple(opt_state[1:])

