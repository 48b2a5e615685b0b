"""Training runs end to end: a group of runs of one architecture, trained together.

Runs that differ only in their seed and numeric optimizer hyperparameters
(learning rate, momentum, weight decay) share one compiled program: their
states are stacked along a model axis and trained by the vmapped epoch. Each
run still trains exactly as it would alone (its own initialisation, data
order and hyperparameters).

Per epoch and run: train loss/accuracy, validation and test loss/accuracy,
seconds and images per second. A run whose training loss turns non-finite
ends with status 'diverged' at that epoch; the others go on.
"""
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lenet_jax import config as config_lib
from lenet_jax import conv
from lenet_jax import optim
from lenet_jax import train
from lenet_jax import validation
from lenet_jax.checkpoint import RunCheckpoints
from lenet_jax.config import Config
from lenet_jax.data import Dataset
from lenet_jax.model import LeNet5


@dataclasses.dataclass
class RunResult:
  config: Config
  status: str = 'running'  # 'ok' or 'diverged'
  diverged_epoch: int | None = None  # 1-based epoch whose training loss was not finite
  history: list[dict[str, float]] = dataclasses.field(default_factory=list)
  compile_seconds: float = 0.0  # shared by the runs of a group
  train_seconds: float = 0.0
  params: Any = None  # final parameters (host arrays)
  # The data it trained on (source, split sizes) and how (group mode, conv
  # implementation, backend): recorded in its results row.
  facts: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def final(self) -> dict[str, float]:
    return self.history[-1] if self.history else {}


def group_key(cfg: Config) -> Config:
  """Runs with equal keys can be trained by one vmapped program."""
  numeric = {name: 0.0 for name in optim.NUMERIC_HYPERPARAMS}
  return dataclasses.replace(cfg, seed=0, optim=dataclasses.replace(cfg.optim, **numeric))


def resolve_vmap(vmap: bool | None) -> bool:
  """Whether groups train stacked in one vmapped program: `vmap`, or by backend.

  On GPU/TPU (or several CPU devices) one vmapped program trains the group.
  On one CPU device stacked models train a little slower per model than one
  model at a time (README, Benchmark), so the members take turns through one
  compiled single-model program.
  """
  if vmap is None:
    return jax.default_backend() != 'cpu' or jax.local_device_count() > 1
  return vmap


def diverged_epoch(history: list[dict[str, float]]) -> int | None:
  """The 1-based epoch whose training loss was not finite, if any."""
  for row in history:
    if not math.isfinite(row['train_loss']):
      return row['epoch']
  return None


def with_input_shape(cfg: Config, dataset: Dataset) -> Config:
  shape = tuple(dataset.train_images.shape[1:])
  return config_lib.override(cfg, {'model.input_shape': shape})


def _summarise(totals) -> tuple[float, float]:
  count = max(int(totals['count']), 1)
  return float(totals['loss_sum']) / count, int(totals['correct']) / count


def _model_sharding(num_models: int):
  """(sharding of the model axis, replicated sharding) over the local devices.

  The stacked runs are split evenly over as many local devices as divide
  their number (all of them on an 8-GPU host training 8 or 16 runs); the data
  is replicated. With one device both are that device.
  """
  devices = jax.local_devices()
  count = max(d for d in range(1, len(devices) + 1) if num_models % d == 0)
  mesh = Mesh(np.array(devices[:count]), ('models',))
  if count > 1:
    logging.info('sharding %d stacked runs over %d devices', num_models, count)
  return NamedSharding(mesh, PartitionSpec('models')), NamedSharding(mesh, PartitionSpec())


def _batch_sharding(batch_size: int):
  """(sharding of a batch, replicated sharding) for one run on several local devices.

  Each batch is split evenly over as many devices as divide the batch size;
  parameters and data are replicated. (None, None) on a single device.
  """
  devices = jax.local_devices()
  count = max(d for d in range(1, len(devices) + 1) if batch_size % d == 0)
  if count == 1:
    return None, None
  logging.info('splitting each batch of %d over %d devices', batch_size, count)
  mesh = Mesh(np.array(devices[:count]), ('batch',))
  return NamedSharding(mesh, PartitionSpec('batch')), NamedSharding(mesh, PartitionSpec())


def _resume(checkpoints, states, results, stacked: bool) -> list[int]:
  """Restores each run's newest checkpoint in place; returns the epochs already done.

  A run whose checkpoint records a non-finite loss is over: it comes back
  with status 'diverged'. Stacked runs advance together, so the others resume
  from the newest epoch they all have; checkpoints newer than the epoch a run
  resumes from are deleted, since it writes them again.
  """
  if not checkpoints:
    return [0] * len(states)
  found = [c.restore_latest(s) for c, s in zip(checkpoints, states)]
  over = [f is not None and diverged_epoch(f[2]) is not None for f in found]
  if stacked:
    epochs = {f[0] if f else 0 for f, o in zip(found, over) if not o}
    if len(epochs) > 1:
      common = min(epochs)
      for i, c in enumerate(checkpoints):
        if not over[i]:
          found[i] = c.restore_latest(states[i], at_most=common) if common else None
      if any(not o and (f is None or f[0] != common) for f, o in zip(found, over)):
        found = [f if o else None for f, o in zip(found, over)]
  done = []
  for i, f in enumerate(found):
    if not over[i]:
      checkpoints[i].delete_after(f[0] if f else 0)
    if f is None:
      done.append(0)
      continue
    done.append(f[0])
    states[i], results[i].history = f[1], f[2]
    results[i].train_seconds = sum(h['seconds'] for h in f[2])
    if over[i]:
      results[i].status, results[i].diverged_epoch = 'diverged', diverged_epoch(f[2])
  return done


def train_group(configs: list[Config], dataset: Dataset,
                on_epoch: Callable[[int, list[RunResult]], bool | None] | None = None,
                keep_params: bool = True, vmap: bool | None = None,
                checkpoint_dirs: Sequence[str] | None = None) -> list[RunResult]:
  """Trains `configs` (equal up to seed and numeric hyperparameters) together.

  `on_epoch(epoch, results)` is called after every epoch; returning True ends
  training there (the runs keep status 'ok' and the epochs they ran).
  `vmap`: stack the runs into one vmapped program (True), train them in turn
  with one compiled single-run program (False), or pick per backend (None:
  in turn on a single CPU device, vmapped elsewhere). Stacked runs are sharded
  over the local devices (see _model_sharding).
  `checkpoint_dirs` (one per config): save each run's state and metrics there
  after every epoch, and resume from the newest readable checkpoint found.
  """
  configs = [with_input_shape(c, dataset) for c in configs]
  base = configs[0]
  for cfg in configs:
    validation.check_config(cfg)
    if group_key(cfg) != group_key(base):
      raise ValueError('train_group needs runs that differ only in seed and '
                       f'{optim.NUMERIC_HYPERPARAMS}; use sweep.groups() to split them.')
  results = [RunResult(cfg) for cfg in configs]
  images, labels = jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels)
  splits = {name: (jnp.asarray(x), jnp.asarray(y)) for name, x, y in (
      ('val', dataset.val_images, dataset.val_labels),
      ('test', dataset.test_images, dataset.test_labels)) if len(x)}
  steps = len(images) // base.batch_size
  if steps == 0:
    raise ValueError(f'batch_size={base.batch_size} is larger than the '
                     f'{len(images)} training examples; use a smaller batch.')
  model = LeNet5(base.model)
  tx = optim.make_optimizer(base.optim, steps, base.epochs)
  states, data_keys = [], []  # one per run
  for cfg in configs:
    init_key, data_key = jax.random.split(jax.random.key(cfg.seed))
    state = train.create_train_state(model, tx, init_key, base.model.input_shape)
    states.append(state.replace(opt_state=optim.with_hyperparams(state.opt_state, cfg.optim)))
    data_keys.append(data_key)

  stacked = len(configs) > 1 and resolve_vmap(vmap)
  shard_models, replicate = _model_sharding(len(configs)) if stacked else (None, None)
  checkpoints = [RunCheckpoints(d) for d in checkpoint_dirs] if checkpoint_dirs else []
  first_epoch = _resume(checkpoints, states, results, stacked)
  lr_factor = optim.schedule_multiplier(base.optim, steps, base.epochs)
  start = time.perf_counter()
  if stacked:
    keys_for = lambda epoch: jax.device_put(
        jnp.stack([jax.random.fold_in(k, epoch) for k in data_keys]), shard_models)
    stack = lambda states: jax.device_put(train.stack(states), shard_models)
    images, labels = jax.device_put((images, labels), replicate)
    splits = jax.device_put(splits, replicate)
    if shard_models.mesh.size > 1:  # each device its own models, no communication
      epoch_many, evaluate_many = train.many_over_devices(
          shard_models.mesh, base.batch_size, base.eval_batch_size, base.data.augment_shift)
      epoch_args, eval_args = (), ()
    else:
      epoch_many, evaluate_many = train.train_epoch_many, train.evaluate_many
      epoch_args = (base.batch_size, base.data.augment_shift)
      eval_args = (base.eval_batch_size,)
    epoch_fn = epoch_many.lower(stack(states), images, labels, keys_for(0),
                                *epoch_args).compile()
    eval_fns = {name: evaluate_many.lower(stack(states), x, y, *eval_args).compile()
                for name, (x, y) in splits.items()}
  else:
    batch_sharding, replicate = _batch_sharding(base.batch_size)
    if replicate is not None:
      images, labels = jax.device_put((images, labels), replicate)
      splits = jax.device_put(splits, replicate)
      states = jax.device_put(states, replicate)
    epoch_fn = train.train_epoch.lower(states[0], images, labels, data_keys[0],
                                       base.batch_size, batch_sharding,
                                       base.data.augment_shift).compile()
    eval_fns = {name: train.evaluate.lower(states[0], x, y, base.eval_batch_size).compile()
                for name, (x, y) in splits.items()}
  compile_seconds = time.perf_counter() - start

  if stacked:
    state = stack(states)

  def run_epoch(epoch: int, live: list[int]):
    """(index, train metrics, {split: eval sums}, seconds) for each live run."""
    nonlocal state
    if stacked:
      start = time.perf_counter()
      state, metrics = epoch_fn(state, images, labels, keys_for(epoch))
      metrics = jax.device_get(metrics)  # the one host sync of the epoch
      seconds = time.perf_counter() - start
      evals = {name: jax.device_get(fn(state, *splits[name])) for name, fn in eval_fns.items()}
      pick = lambda tree, i: jax.tree.map(lambda v: v[i], tree)
      return [(i, pick(metrics, i), {n: pick(e, i) for n, e in evals.items()}, seconds)
              for i in live]
    out = []
    for i in live:
      start = time.perf_counter()
      states[i], metrics = epoch_fn(states[i], images, labels,
                                    jax.random.fold_in(data_keys[i], epoch))
      metrics = jax.device_get(metrics)
      seconds = time.perf_counter() - start
      out.append((i, metrics, {name: jax.device_get(fn(states[i], *splits[name]))
                               for name, fn in eval_fns.items()}, seconds))
    return out

  live = [i for i, res in enumerate(results) if res.status == 'running']
  for epoch in range(min((first_epoch[i] for i in live), default=base.epochs), base.epochs):
    due = [i for i in live if first_epoch[i] <= epoch]
    for i, m, evals, seconds in run_epoch(epoch, due):
      row = {'epoch': epoch + 1, 'train_loss': float(m['loss']),
             'train_acc': int(m['correct']) / int(m['count']),
             'seconds': seconds, 'images_per_s': int(m['count']) / seconds,
             'learning_rate': float(configs[i].optim.learning_rate *
                                    lr_factor((epoch + 1) * steps))}
      for name, sums in evals.items():
        row[f'{name}_loss'], row[f'{name}_acc'] = _summarise(sums)
      res = results[i]
      res.train_seconds += seconds
      res.history.append(row)
      if not math.isfinite(row['train_loss']):
        res.status, res.diverged_epoch = 'diverged', epoch + 1
        live.remove(i)
      if checkpoints:  # a diverged run's too: its history says it is over
        checkpoints[i].save(epoch + 1, train.unstack(state, i) if stacked else states[i],
                            res.history)
    stop = on_epoch(epoch, results) if on_epoch else False
    if stop or not live:  # on_epoch returns True to end training early
      break
  for c in checkpoints:
    c.close()
  facts = {'data_source': dataset.source, 'data_fingerprint': dataset.fingerprint,
           'train_size': len(dataset.train_images),
           'val_size': len(dataset.val_images), 'test_size': len(dataset.test_images),
           'group_mode': 'vmap' if stacked else 'in_turn',
           'conv_impl_used': conv.resolve_impl(base.model.conv_impl),
           'backend': jax.default_backend()}
  for i, res in enumerate(results):
    res.facts = dict(facts)
    res.compile_seconds = compile_seconds
    if res.status == 'running':
      res.status = 'ok'
    if keep_params:
      res.params = jax.device_get(train.unstack(state.params, i) if stacked
                                  else states[i].params)
  return results
