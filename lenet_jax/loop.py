"""Training runs end to end: a group of runs of one architecture, trained together.

Runs that differ only in their seed and numeric optimizer hyperparameters
(learning rate, momentum, weight decay) share one compiled program: stacked
along a model axis and trained by the vmapped epoch (GPU/TPU), or in turn by
the single-run program (one CPU device). Each run still trains exactly as it
would alone (its own initialisation, data order and hyperparameters).

One program per architecture: the compiled epoch (training, evaluation of
every split and the best-on-validation record, train.epoch_and_evaluate) is
kept for the process and reused by every later group of the same
architecture, recipe, group width and data shapes; a stacked group narrower
than its width is padded with inactive slots, so the last group of a sweep
needs no program of its own.

Per epoch and run: train loss/accuracy, validation and test loss/accuracy,
seconds and images per second. A run whose training loss turns non-finite
ends with status 'diverged' at that epoch; with `patience`, a run whose
validation accuracy has not improved for that many epochs stops (status 'ok');
a finished run stops updating while the others go on.
"""
import collections
import contextlib
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
from lenet_jax import workdir as workdir_lib
from lenet_jax.checkpoint import GroupCheckpoints, state_arrays
from lenet_jax.config import Config
from lenet_jax.data import Dataset
from lenet_jax import model as model_lib
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
  model_state: Any = None  # final non-trainable collections (batch statistics), host arrays
  # The model of the best validation accuracy: {'params', 'model_state'} (host arrays)
  best: Any = None
  # Per test example (in the data's test order), whether that best model's top
  # class is the label: bool, shape (n_test,); its mean is the best epoch's
  # test_acc. None for a diverged run (and without kept models or test split).
  test_correct: np.ndarray | None = None
  # The data it trained on (source, split sizes) and how (group mode, conv
  # implementation, backend): recorded in its results row.
  facts: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def final(self) -> dict[str, float]:
    return self.history[-1] if self.history else {}

  @property
  def best_epoch(self) -> int | None:
    return best_epoch(self.history)


def group_key(cfg: Config) -> Config:
  """Runs with equal keys can be trained by one vmapped program."""
  numeric = {name: 0.0 for name in optim.NUMERIC_HYPERPARAMS}
  return dataclasses.replace(cfg, seed=0, optim=dataclasses.replace(cfg.optim, **numeric))


def resolve_vmap(vmap: bool | None) -> bool:
  """Whether groups train stacked in one vmapped program: `vmap`, or by backend.

  On GPU/TPU (or several CPU devices) one vmapped program trains the group.
  On one CPU device stacked models train a little slower per model than one
  model at a time (docs/benchmark.md, CPU suite), so the members take turns through one
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


def best_epoch(history: list[dict[str, float]]) -> int | None:
  """The 1-based epoch of the highest validation accuracy (the first of ties);
  the last epoch without a validation split; None before any epoch."""
  if not history:
    return None
  if 'val_acc' not in history[0]:
    return history[-1]['epoch']
  best = max(history, key=lambda h: (h['val_acc'] if math.isfinite(h['val_acc']) else -1,
                                     -h['epoch']))
  return best['epoch']


def patience_ran_out(history: list[dict[str, float]], patience: int | None) -> bool:
  """Whether a run with `patience` stops after the last epoch of `history`."""
  if patience is None or not history:
    return False
  return history[-1]['epoch'] - best_epoch(history) >= patience


def status_of(history: list[dict[str, float]], cfg: Config) -> str:
  """'diverged', 'ok' (trained every epoch, or stopped by its patience) or 'running'."""
  if diverged_epoch(history) is not None:
    return 'diverged'
  if len(history) >= cfg.epochs or patience_ran_out(history, cfg.patience):
    return 'ok'
  return 'running'


def with_input_shape(cfg: Config, dataset: Dataset) -> Config:
  shape = tuple(dataset.train_images.shape[1:])
  return config_lib.override(cfg, {'model.input_shape': shape})


def check_against_data(cfg: Config, dataset: Dataset) -> None:
  """What `cfg` asks of its data, once the data is split; ValueError naming the fix."""
  train_size = len(dataset.train_images)
  if cfg.batch_size > train_size:
    raise ValueError(
        f'batch_size={cfg.batch_size} is larger than the {train_size} training examples '
        f'of {dataset.name} (after {len(dataset.val_images)} are held out for validation); '
        'use a smaller --batch_size or --validation_size.')
  if cfg.patience is not None and not len(dataset.val_images):
    raise ValueError(f'patience={cfg.patience} stops a run by its validation accuracy, but '
                     f'{dataset.name} has no validation examples here: give a '
                     'validation_size > 0, or leave patience unset.')


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


@dataclasses.dataclass
class _Program:
  """What the groups of one architecture share: model, optimizer and compiled code."""
  model: LeNet5
  tx: Any
  init: Callable  # stacked seeds -> (stacked initial states, stacked data keys)
  epochs: dict = dataclasses.field(default_factory=dict)  # (width, shapes...) -> Compiled
  correct: dict = dataclasses.field(default_factory=dict)  # the same keys -> Compiled


# Programs of the architectures trained in this process, most recent last; a
# sweep over many architectures keeps the newest few.
_PROGRAMS: collections.OrderedDict = collections.OrderedDict()
PROGRAMS_KEPT = 8


def _program_for(base: Config, steps: int) -> _Program:
  key = (group_key(base), steps)
  if key in _PROGRAMS:
    _PROGRAMS.move_to_end(key)
    return _PROGRAMS[key]
  model = LeNet5(base.model)
  tx = optim.make_optimizer(base.optim, steps, base.epochs)
  shape = base.model.input_shape

  def init_one(seed):
    init_key, data_key = jax.random.split(jax.random.key(seed))
    return train.create_train_state(model, tx, init_key, shape), data_key

  program = _Program(model, tx, jax.jit(jax.vmap(init_one)))
  _PROGRAMS[key] = program
  while len(_PROGRAMS) > PROGRAMS_KEPT:
    _PROGRAMS.popitem(last=False)
  return program


def clear_programs() -> None:
  """Forgets every kept program (the next group compiles afresh)."""
  _PROGRAMS.clear()


def _initial_states(program: _Program, configs: list[Config], width: int):
  """(states, data keys) stacked over `width` slots: one per config, then padding
  slots (copies of the first run, never trained)."""
  seeds = [c.seed for c in configs] + [configs[0].seed] * (width - len(configs))
  states, data_keys = program.init(jnp.asarray(seeds, jnp.uint32))
  hyper = optim.hyperparams(states.opt_state)
  values = {k: jnp.asarray([optim.injected(c.optim)[k] for c in configs]
                           + [optim.injected(configs[0].optim)[k]] * (width - len(configs)),
                           hyper[k].dtype) for k in optim.injected(configs[0].optim)}
  states = states.replace(opt_state=optim.replace_hyperparams(states.opt_state, values))
  return states, data_keys


def _members(tree, count: int):
  """The first `count` rows (the group's members, not its padding) of a stacked pytree."""
  return jax.tree.map(lambda x: x[:count], tree)


def _host_rows(tree, count: int) -> list:
  """The first `count` entries of a stacked pytree, as host arrays per entry."""
  host = jax.device_get(tree)
  return [jax.tree.map(lambda x: x[i], host) for i in range(count)]


def _test_correct(program: _Program, fn_key, states, bests, test, base: Config,
                  shard_models=None):
  """Per test example, whether the best model is right (train.correct_each): of one
  run, or of every slot of a stacked group (`shard_models` its sharding), on the device.

  The test split in the eval batch size and, stacked, at the group's width and
  over its devices: the shapes its epoch program evaluated, compiled once per
  program and group shape.
  """
  state = states.replace(params=bests['params'], model_state=bests['model_state'],
                         opt_state=None, key=None)
  images, labels = test
  if fn_key not in program.correct:
    if shard_models is None:
      fn = train.correct_each.lower(state, images, labels, batch_size=base.eval_batch_size)
    elif shard_models.mesh.size > 1:
      fn = train.correct_each_over_devices(shard_models.mesh, base.eval_batch_size).lower(
          state, images, labels)
    else:
      fn = train.correct_each_many.lower(state, images, labels, base.eval_batch_size)
    program.correct[fn_key] = fn.compile()
  return program.correct[fn_key](state, images, labels)


def _check_test_correct(res: RunResult) -> None:
  """Warns where the best model's per-example answers do not count to its best
  epoch's test accuracy (a compiler that rounds its two programs differently)."""
  bits = res.test_correct
  want = round(res.history[res.best_epoch - 1]['test_acc'] * len(bits))
  if int(bits.sum()) != want:
    logging.warning('run %s: its best model answers %d of %d test examples right here, '
                    'but %d in its best epoch\'s evaluation', config_lib.run_id(res.config),
                    int(bits.sum()), len(bits), want)


def train_group(configs: list[Config], dataset: Dataset,
                on_epoch: Callable[[int, list[RunResult]], bool | None] | None = None,
                keep_params: bool = True, vmap: bool | None = None,
                checkpoint_dir: str | None = None, run_ids: Sequence[str] | None = None,
                checkpoint_every: float = 60.0, width: int | None = None,
                say: Callable[[str], None] | None = None) -> list[RunResult]:
  """Trains `configs` (equal up to seed and numeric hyperparameters) together.

  `on_epoch(epoch, results)` is called after every epoch; returning True ends
  training there (the runs keep status 'ok' and the epochs they ran).
  `vmap`: stack the runs into one vmapped program (True), train them in turn
  with one compiled single-run program (False), or pick per backend (None:
  in turn on a single CPU device, vmapped elsewhere). Stacked runs are sharded
  over the local devices (see _model_sharding), and padded to `width` slots
  (default: as many as runs) so that groups of one architecture share a program.
  `checkpoint_dir`: the group's checkpoints (checkpoint.GroupCheckpoints, the
  members named by `run_ids`): training resumes from the newest usable one,
  saves one when `checkpoint_every` seconds have passed since the last (0:
  after every epoch), at the end, on SIGUSR1, and on SIGINT/SIGTERM, which
  then end training with KeyboardInterrupt once the epoch in progress is done
  (a second signal ends it at once).
  `keep_params`: give each result its final and best models (host arrays) and
  the best model's per-example test correctness (`RunResult.test_correct`: one
  forward pass over the test split per run that did not diverge, after training).
  `say`: progress lines (compilation).
  """
  configs = [with_input_shape(c, dataset) for c in configs]
  base = configs[0]
  for cfg in configs:
    validation.check_config(cfg)
    if group_key(cfg) != group_key(base):
      raise ValueError('train_group needs runs that differ only in seed and '
                       f'{optim.NUMERIC_HYPERPARAMS}; use sweep.groups() to split them.')
  count = len(configs)
  results = [RunResult(cfg) for cfg in configs]
  images, labels = jnp.asarray(dataset.train_images), jnp.asarray(dataset.train_labels)
  splits = {name: (jnp.asarray(x), jnp.asarray(y)) for name, x, y in (
      ('val', dataset.val_images, dataset.val_labels),
      ('test', dataset.test_images, dataset.test_labels)) if len(x)}
  check_against_data(base, dataset)
  steps = len(images) // base.batch_size
  width = max(width or count, count)
  stacked = width > 1 and resolve_vmap(vmap)
  width = width if stacked else count
  program = _program_for(base, steps)
  states, data_keys = _initial_states(program, configs, width)
  # A copy: the epoch program donates both, so they must not share buffers.
  bests = jax.tree.map(jnp.copy, jax.vmap(train.initial_best)(states))

  checkpoints = (GroupCheckpoints(checkpoint_dir,
                                  list(run_ids or map(config_lib.run_id, configs)))
                 if checkpoint_dir else None)
  done = [0] * count
  if checkpoints:
    found = checkpoints.restore_latest(_members({'state': state_arrays(states),
                                                 'best': bests}, count))
    if found is not None:
      saved, done, histories = found
      # The members' rows from the checkpoint, the padding slots as they were.
      whole = jax.tree.map(lambda full, part: jnp.concatenate([jnp.asarray(part), full[count:]]),
                           {'state': state_arrays(states), 'best': bests}, saved)
      states, bests = states.replace(**whole['state']), whole['best']
      for res, history in zip(results, histories):
        res.history = history
        res.train_seconds = sum(h['seconds'] for h in history)
        res.status = status_of(history, res.config)
        res.diverged_epoch = diverged_epoch(history)

  fn_key = (width, stacked, jax.local_device_count(), images.shape, str(images.dtype),
            tuple((n, x.shape) for n, (x, _) in splits.items()))
  compile_start = time.perf_counter()
  if stacked:
    shard_models, replicate = _model_sharding(width)
    images, labels, splits = jax.device_put((images, labels, splits), replicate)
    states, bests, data_keys = jax.device_put((states, bests, data_keys), shard_models)
    active_sharding = shard_models
    if fn_key not in program.epochs:
      if shard_models.mesh.size > 1:  # each device its own models, no communication
        fn = train.many_over_devices(shard_models.mesh, base.batch_size,
                                     base.eval_batch_size, base.data.augment_shift)
        static = {}
      else:
        fn = train.epoch_and_evaluate_many
        static = dict(batch_size=base.batch_size, eval_batch_size=base.eval_batch_size,
                      augment_shift=base.data.augment_shift)
      active = jax.device_put(jnp.ones(width, bool), shard_models)
      program.epochs[fn_key] = fn.lower(states, bests, active, images, labels, data_keys,
                                        jnp.int32(0), splits, **static).compile()
  else:
    batch_sharding, replicate = _batch_sharding(base.batch_size)
    states = [train.unstack(states, i) for i in range(count)]
    bests = [train.unstack(bests, i) for i in range(count)]
    data_keys = [data_keys[i] for i in range(count)]
    if replicate is not None:
      images, labels, splits, states, bests = jax.device_put(
          (images, labels, splits, states, bests), replicate)
    active_sharding = replicate
    if fn_key not in program.epochs:
      program.epochs[fn_key] = train.epoch_and_evaluate.lower(
          states[0], bests[0], jnp.bool_(True), images, labels, data_keys[0], jnp.int32(0),
          splits, batch_size=base.batch_size, eval_batch_size=base.eval_batch_size,
          augment_shift=base.data.augment_shift, batch_sharding=batch_sharding).compile()
  epoch_fn = program.epochs[fn_key]
  compile_seconds = time.perf_counter() - compile_start

  lr_factor = optim.schedule_multiplier(base.optim, steps, base.epochs)
  live = [i for i, res in enumerate(results) if res.status == 'running']

  def record(i: int, epoch: int, m, evals, seconds: float) -> None:
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
    done[i] = epoch + 1
    res.status = status_of(res.history, res.config)
    if res.status == 'diverged':
      res.diverged_epoch = epoch + 1
    if res.status != 'running':
      live.remove(i)

  def arrays():
    """The members' states and best models, stacked (what a checkpoint holds)."""
    if stacked:
      return _members({'state': state_arrays(states), 'best': bests}, count)
    return {'state': state_arrays(train.stack(states)), 'best': train.stack(bests)}

  last_save = time.monotonic()
  trained = False

  def save() -> None:
    nonlocal last_save
    checkpoints.save(arrays(), done, [r.history for r in results])
    last_save = time.monotonic()

  # Without checkpoints, signals act as they always do (KeyboardInterrupt at once).
  signals = (workdir_lib.stop_requests() if checkpoints
             else contextlib.nullcontext(workdir_lib.StopRequests()))
  try:
    with signals as requests:

      def answer_requests() -> None:
        if checkpoints and (requests.stop or requests.checkpoint
                            or time.monotonic() - last_save >= checkpoint_every):
          save()
          requests.checkpoint = False
        if requests.stop:
          raise KeyboardInterrupt

      if say and live:  # from here on a signal is answered with a checkpoint
        program_note = (f'compiled in {compile_seconds:.1f}s' if compile_seconds > 0.5
                        else 'its program compiled already')
        say(f'training {len(live)} run(s), {width} per program ({program_note})')
      for epoch in range(min((done[i] for i in live), default=base.epochs), base.epochs):
        due = [i for i in live if done[i] <= epoch]
        if stacked:
          mask = np.zeros(width, bool)  # padding slots never train
          mask[due] = True
          active = jax.device_put(mask, active_sharding)
          start = time.perf_counter()
          states, bests, metrics, evals = epoch_fn(states, bests, active, images, labels,
                                                   data_keys, jnp.int32(epoch), splits)
          metrics, evals = jax.device_get((metrics, evals))  # the epoch's one host sync
          seconds = time.perf_counter() - start
          pick = lambda tree, i: jax.tree.map(lambda v: v[i], tree)
          for i in due:
            record(i, epoch, pick(metrics, i), {n: pick(e, i) for n, e in evals.items()},
                   seconds)
          trained = True
          answer_requests()
        else:
          for i in due:
            start = time.perf_counter()
            states[i], bests[i], metrics, evals = epoch_fn(
                states[i], bests[i], jnp.bool_(True), images, labels, data_keys[i],
                jnp.int32(epoch), splits)
            metrics, evals = jax.device_get((metrics, evals))
            record(i, epoch, metrics, evals, time.perf_counter() - start)
            trained = True
            answer_requests()
        stop = on_epoch(epoch, results) if on_epoch else False
        if stop or not live:  # on_epoch returns True to end training early
          break
      if checkpoints and trained:
        save()  # always at the end, before the runs' files are written
      if requests.stop:  # a signal after the last epoch's check: stop all the same
        raise KeyboardInterrupt
  finally:
    if checkpoints:
      checkpoints.close()
  facts = {'data_source': dataset.source, 'data_fingerprint': dataset.fingerprint,
           'train_size': len(dataset.train_images),
           'val_size': len(dataset.val_images), 'test_size': len(dataset.test_images),
           'group_mode': 'vmap' if stacked else 'in_turn',
           'conv_impl_used': conv.resolve_impl(base.model.conv_impl,
                                               precision=base.model.precision),
           'precision_used': model_lib.precision_used(base.model.precision),
           'backend': jax.default_backend()}
  scored = [i for i, res in enumerate(results) if res.status != 'diverged' and res.history]
  if keep_params and 'test' in splits and scored:
    start = time.perf_counter()
    if stacked:
      members = _test_correct(program, fn_key, states, bests, splits['test'], base,
                              shard_models)[:count]
    else:
      members = {i: _test_correct(program, fn_key, states[i], bests[i], splits['test'], base)
                 for i in scored}
    members = jax.device_get(members)
    for i in scored:
      results[i].test_correct = np.asarray(members[i], bool)
      _check_test_correct(results[i])
    logging.info('per-example test correctness of %d run(s): %.2fs', len(scored),
                 time.perf_counter() - start)
  if keep_params:
    final_arrays = arrays()
    finals = _host_rows(final_arrays['state'], count)
    best_models = _host_rows(final_arrays['best'], count)
  for i, res in enumerate(results):
    res.facts = dict(facts)
    res.compile_seconds = compile_seconds
    if res.status == 'running':
      res.status = 'ok'
    if keep_params:
      res.params, res.model_state = finals[i]['params'], finals[i]['model_state']
      res.best = {'params': best_models[i]['params'],
                  'model_state': best_models[i]['model_state']}
  return results
