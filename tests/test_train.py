"""Pure train/eval steps: fitting, determinism, exact evaluation, foreign models, divergence."""
import os
import re
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import float_tolerance, on_cpu, separable_images
from lenet_jax import config as config_lib
from lenet_jax import data, loop, train
from lenet_jax.config import Config, ModelConfig, OptimConfig
from lenet_jax.model import LeNet5

# Comparisons of two programs run in full float32 off the CPU, where XLA would
# otherwise use TF32 (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('float32_matmuls')

TINY = ModelConfig(channels=(4, 8), activation='relu', dense=(32,))


def tiny_dataset(n_train=512, n_test=200, seed=0):
  rng = np.random.default_rng(seed)
  x, y = separable_images(n_train + 300 + n_test, rng)
  x = x[..., None]
  y = y.astype(np.int32)
  return data.Dataset('separable', 'test fixture', x[:n_train], y[:n_train],
                      x[n_train:n_train + 300], y[n_train:n_train + 300],
                      x[-n_test:], y[-n_test:])


def tiny_config(**overrides):
  cfg = Config(model=TINY, optim=OptimConfig(learning_rate=3e-3), batch_size=64, epochs=3,
               eval_batch_size=128)
  return config_lib.override(cfg, overrides)


def test_train_step_fits_a_separable_dataset():
  ds = tiny_dataset()
  [res] = loop.train_group([tiny_config(epochs=6)], ds)
  assert res.status == 'ok'
  logits = LeNet5(res.config.model).apply({'params': res.params},
                                          ds.train_images.astype(np.float32) / 255)
  assert np.mean(np.argmax(logits, -1) == ds.train_labels) == 1.0
  assert res.final['val_acc'] == 1.0 and res.final['test_acc'] == 1.0


def test_same_seed_same_parameters_and_different_seed_differs():
  ds = tiny_dataset()
  a, b = (loop.train_group([tiny_config(epochs=1)], ds)[0] for _ in range(2))
  c = loop.train_group([tiny_config(epochs=1, seed=1)], ds)[0]
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    # bitwise on the CPU; GPU kernels may reorder float sums between runs
    np.testing.assert_allclose(x, y, **float_tolerance(off_cpu=(1e-5, 1e-6)))
  assert not np.array_equal(a.params['dense1']['kernel'], c.params['dense1']['kernel'])


@pytest.mark.parametrize('vmap', [False, True])
def test_a_group_trains_each_run_as_it_would_alone(vmap):
  """In turn: bitwise. Stacked (vmap): within float reassociation."""
  ds = tiny_dataset()
  configs = [tiny_config(epochs=2, seed=0),
             tiny_config(epochs=2, seed=1, **{'optim.learning_rate': 1e-3})]
  together = loop.train_group(configs, ds, vmap=vmap)
  for cfg, res in zip(configs, together):
    [alone] = loop.train_group([cfg], ds)
    pairs = list(zip(jax.tree.leaves(alone.params), jax.tree.leaves(res.params)))
    if vmap or not on_cpu():  # bitwise is asserted on the CPU only
      for x, y in pairs:
        np.testing.assert_allclose(x, y, **float_tolerance(rtol=2e-4, atol=2e-5))
      assert abs(alone.final['test_loss'] - res.final['test_loss']) < (1e-4 if on_cpu() else 1e-3)
    else:
      for x, y in pairs:
        np.testing.assert_array_equal(x, y)
      assert alone.final['test_loss'] == res.final['test_loss']


def test_runs_of_different_architectures_are_refused_as_a_group():
  with pytest.raises(ValueError, match='differ only in seed'):
    loop.train_group([tiny_config(), tiny_config(**{'model.channels': (5, 8)})], tiny_dataset())


@pytest.mark.parametrize('batch_size', [1, 7, 64, 199, 200, 1000])
def test_evaluation_counts_every_example_exactly_once(batch_size):
  ds = tiny_dataset()
  model = LeNet5(TINY)
  state = train.create_train_state(model, optax.sgd(0.1), jax.random.key(0), (28, 28, 1))
  totals = train.evaluate(state, jnp.asarray(ds.test_images), jnp.asarray(ds.test_labels),
                          batch_size=batch_size)
  logits = model.apply({'params': state.params}, ds.test_images.astype(np.float32) / 255)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, ds.test_labels)
  assert int(totals['count']) == 200
  assert int(totals['correct']) == int(np.sum(np.argmax(logits, -1) == ds.test_labels))
  np.testing.assert_allclose(float(totals['loss_sum']), float(losses.sum()), rtol=1e-4)


class ForeignMLP(nn.Module):
  """Somebody else's model, with batch norm: trained through the imported train_step."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(64)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(10)(nn.relu(x))


def test_a_foreign_flax_model_trains_through_the_imported_train_step():
  from lenet_jax import create_train_state, eval_step, train_step  # the public API
  ds = tiny_dataset()
  state = create_train_state(ForeignMLP(), optax.adam(1e-2), jax.random.key(0), (28, 28, 1))
  assert 'batch_stats' in state.model_state
  # train_step donates the state, so keep a host copy.
  stats_before = np.array(state.model_state['batch_stats']['BatchNorm_0']['mean'])
  first = None
  for epoch in range(5):
    for i in range(0, 512, 64):
      state, metrics = train_step(state, {'image': ds.train_images[i:i + 64],
                                          'label': ds.train_labels[i:i + 64]})
      first = first if first is not None else float(metrics['loss'])
  assert float(metrics['loss']) < first / 5
  assert not np.allclose(state.model_state['batch_stats']['BatchNorm_0']['mean'], stats_before)
  sums = eval_step(state, {'image': ds.test_images, 'label': ds.test_labels})
  assert int(sums['count']) == 200 and int(sums['correct']) >= 190


@pytest.mark.parametrize('vmap', [True, False])
def test_a_diverging_run_is_recorded_and_the_others_go_on(vmap):
  ds = tiny_dataset()
  sgd = {'optim.optimizer': 'sgd', 'optim.schedule': 'constant'}
  configs = [tiny_config(epochs=3, seed=0, **sgd, **{'optim.learning_rate': 0.1}),
             tiny_config(epochs=3, seed=1, **sgd, **{'optim.learning_rate': 1e12})]
  ok, bad = loop.train_group(configs, ds, vmap=vmap)
  assert bad.status == 'diverged' and bad.diverged_epoch == 1
  assert ok.status == 'ok' and len(ok.history) == 3


def test_optimizers_and_schedules_all_train():
  ds = tiny_dataset(n_train=256)
  for optimizer, schedule, lr in [('sgd', 'constant', 0.5), ('momentum', 'step', 0.05),
                                  ('adamw', 'cosine', 3e-3)]:
    cfg = tiny_config(epochs=2, **{'optim.optimizer': optimizer, 'optim.schedule': schedule,
                                   'optim.learning_rate': lr, 'optim.step_decay_every': 1})
    [res] = loop.train_group([cfg], ds)
    assert res.status == 'ok'
    assert res.history[-1]['train_loss'] < res.history[0]['train_loss'] * 1.05, optimizer


def test_frozen_layers_keep_their_initial_values():
  ds = tiny_dataset(n_train=256)
  [res] = loop.train_group([tiny_config(epochs=1, **{'optim.frozen': ('block1_conv1',)})], ds)
  init_key, _ = jax.random.split(jax.random.key(0))
  initial = LeNet5(res.config.model).init(init_key, jnp.zeros((1, 28, 28, 1)))['params']
  np.testing.assert_array_equal(res.params['block1_conv1']['kernel'],
                                initial['block1_conv1']['kernel'])
  assert not np.array_equal(res.params['block2_conv1']['kernel'],
                            initial['block2_conv1']['kernel'])


def test_shift_batch_moves_each_image_by_its_own_draw():
  from experiments.evaluation import shift_images  # the evaluation's convention
  images = jnp.asarray(np.random.default_rng(0).integers(1, 256, (64, 7, 9, 2), np.uint8))
  key = jax.random.key(3)
  shifted = np.asarray(train.shift_batch(images, key, 3))
  shifts = np.asarray(jax.random.randint(key, (64, 2), -3, 4))  # the draws it makes
  assert shifts.min() == -3 and shifts.max() == 3
  for image, out, (dy, dx) in zip(np.asarray(images), shifted, shifts):
    np.testing.assert_array_equal(out, shift_images(image[None], int(dy), int(dx))[0])


def test_a_shift_augmented_epoch_is_the_steps_on_shifted_batches():
  """Inside the epoch's scan, step t shifts its batch with fold_in(epoch key, t)."""
  ds = tiny_dataset(n_train=128)
  images, labels = jnp.asarray(ds.train_images), jnp.asarray(ds.train_labels)
  tx = optax.adam(1e-2)
  state = lambda: train.create_train_state(LeNet5(TINY), tx, jax.random.key(0), (28, 28, 1))
  key = jax.random.key(7)
  scanned, _ = train.train_epoch(state(), images, labels, key, batch_size=32, augment_shift=2)
  by_hand = state()
  order = np.asarray(jax.random.permutation(key, 128)).reshape(4, 32)
  for step, idx in enumerate(order):
    batch = {'image': train.shift_batch(images[idx], jax.random.fold_in(key, step), 2),
             'label': labels[idx]}
    by_hand, _ = train.train_step(by_hand, batch)
  for x, y in zip(jax.tree.leaves(scanned.params), jax.tree.leaves(by_hand.params)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
  unshifted, _ = train.train_epoch(state(), images, labels, key, batch_size=32)
  assert not np.allclose(unshifted.params['dense1']['kernel'], scanned.params['dense1']['kernel'])


def test_shift_augmented_runs_train_alike_stacked():
  """Each stacked run draws its shifts from its own data key, as it would alone."""
  ds = tiny_dataset(n_train=256)
  configs = [tiny_config(epochs=1, seed=seed, **{'data.augment_shift': 2}) for seed in (0, 1)]
  together = loop.train_group(configs, ds, vmap=True)
  alone = [loop.train_group([cfg], ds)[0] for cfg in configs]
  for a, b in zip(alone, together):
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
      np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize('shift', [-1, 28, True, 1.5])
def test_augment_shift_must_fit_the_image(shift):
  from lenet_jax import validation
  with pytest.raises(ValueError, match=re.escape(f'data.augment_shift={shift!r} must be an '
                                                 'integer in 0..27')):
    validation.check_config(tiny_config(**{'data.augment_shift': shift}))


@pytest.mark.cpu_bitwise
@pytest.mark.parametrize('vmap', [False, True])
def test_an_interrupted_run_resumes_to_identical_parameters(tmp_path, vmap):
  ds = tiny_dataset(n_train=256)
  configs = [tiny_config(epochs=3, seed=s) for s in (0, 1)]
  group = str(tmp_path / 'group')
  uninterrupted = loop.train_group(configs, ds, vmap=vmap)
  # Stop after the first epoch, as a kill would, then run the same thing again.
  stopped = loop.train_group(configs, ds, on_epoch=lambda epoch, _: epoch == 0,
                             checkpoint_dir=group, vmap=vmap, checkpoint_every=0)
  assert [len(r.history) for r in stopped] == [1, 1]
  resumed = loop.train_group(configs, ds, checkpoint_dir=group, vmap=vmap)
  for a, b in zip(uninterrupted, resumed):
    assert [h['epoch'] for h in b.history] == [1, 2, 3]
    assert [h['train_loss'] for h in a.history] == [h['train_loss'] for h in b.history]
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
      np.testing.assert_array_equal(x, y)


@pytest.mark.cpu_bitwise
def test_a_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
  ds = tiny_dataset(n_train=256)
  cfg = tiny_config(epochs=3)
  group = tmp_path / 'group'
  loop.train_group([cfg], ds, on_epoch=lambda epoch, _: epoch == 1, checkpoint_dir=str(group),
                   checkpoint_every=0)
  assert sorted(p.name for p in group.iterdir() if p.name.isdigit()) == ['1', '2']
  for path in (group / '2').rglob('*'):  # damage every file of the newest checkpoint
    if path.is_file():
      path.write_bytes(b'garbage')
  [resumed] = loop.train_group([cfg], ds, checkpoint_dir=str(group))
  assert 'is corrupt or incomplete' in capsys.readouterr().out
  [clean] = loop.train_group([cfg], ds)
  for x, y in zip(jax.tree.leaves(clean.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.cpu_bitwise
def test_a_group_resumes_the_members_that_have_not_finished(tmp_path):
  """After some members were written, the rest of the group resumes from the
  group's checkpoint (which holds them all)."""
  ds = tiny_dataset(n_train=256)
  configs = [tiny_config(epochs=3, seed=s) for s in (0, 1)]
  group = str(tmp_path / 'group')
  uninterrupted = loop.train_group(configs, ds)
  loop.train_group(configs, ds, on_epoch=lambda epoch, _: epoch == 0, checkpoint_dir=group,
                   run_ids=['a', 'b'], checkpoint_every=0)
  epochs = []
  [b] = loop.train_group(configs[1:], ds, checkpoint_dir=group, run_ids=['b'],
                         on_epoch=lambda epoch, _: epochs.append(epoch + 1))
  assert epochs == [2, 3]  # epoch 1 came from the checkpoint
  _assert_same_runs(uninterrupted[1:], [b])


def test_a_checkpoint_of_other_runs_is_not_used(tmp_path, capsys):
  ds = tiny_dataset(n_train=256)
  group = str(tmp_path / 'group')
  loop.train_group([tiny_config(epochs=1)], ds, checkpoint_dir=group, run_ids=['a'])
  [res] = loop.train_group([tiny_config(epochs=2)], ds, checkpoint_dir=group, run_ids=['b'])
  assert 'does not fit its group' in capsys.readouterr().out
  assert [h['epoch'] for h in res.history] == [1, 2]


def _assert_same_runs(want, got):
  for a, b in zip(want, got):
    assert (a.status, a.diverged_epoch) == (b.status, b.diverged_epoch)
    assert [h['epoch'] for h in a.history] == [h['epoch'] for h in b.history]
    np.testing.assert_array_equal([h['train_loss'] for h in a.history],
                                  [h['train_loss'] for h in b.history])
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
      np.testing.assert_array_equal(x, y)


@pytest.mark.cpu_bitwise
@pytest.mark.parametrize('vmap', [True, False])
def test_sigterm_saves_the_epoch_in_progress_and_resumes_exactly(tmp_path, vmap):
  """SIGTERM asks for a stop: the group finishes the epoch (in turn: the member)
  in progress, saves, and ends with KeyboardInterrupt; the save came from the
  signal, not the cadence. In turn the members are then an epoch apart."""
  ds = tiny_dataset(n_train=256)
  configs = [tiny_config(epochs=3, seed=s) for s in (0, 1)]
  group = tmp_path / 'group'
  uninterrupted = loop.train_group(configs, ds, vmap=vmap)
  term = lambda epoch, _: os.kill(os.getpid(), signal.SIGTERM) if epoch == 0 else None
  with pytest.raises(KeyboardInterrupt):
    loop.train_group(configs, ds, on_epoch=term, checkpoint_dir=str(group), vmap=vmap,
                     checkpoint_every=1e9)
  # Stacked both did epoch 2; in turn member 0 did, member 1 had not started it.
  assert [p.name for p in group.iterdir() if p.name.isdigit()] == ['4' if vmap else '3']
  for _ in range(2):  # resumes, and a second rerun finds the runs finished as well
    resumed = loop.train_group(configs, ds, checkpoint_dir=str(group), vmap=vmap)
    _assert_same_runs(uninterrupted, resumed)


@pytest.mark.cpu_bitwise
@pytest.mark.parametrize('vmap', [True, False])
def test_a_group_with_a_diverged_member_resumes_exactly(tmp_path, vmap):
  """The diverged run's history records its divergence, so it is not trained
  again and does not hold the others back."""
  ds = tiny_dataset(n_train=256)
  sgd = {'optim.optimizer': 'sgd', 'optim.schedule': 'constant'}
  configs = [tiny_config(epochs=4, seed=0, **sgd, **{'optim.learning_rate': 0.1}),
             tiny_config(epochs=4, seed=1, **sgd, **{'optim.learning_rate': 1e12})]
  group = str(tmp_path / 'group')
  uninterrupted = loop.train_group(configs, ds, vmap=vmap)
  assert uninterrupted[1].status == 'diverged' and uninterrupted[1].diverged_epoch == 1
  stopped = loop.train_group(configs, ds, on_epoch=lambda epoch, _: epoch == 2,
                             checkpoint_dir=group, vmap=vmap, checkpoint_every=0)
  assert [len(r.history) for r in stopped] == [3, 1]
  resumed = loop.train_group(configs, ds, checkpoint_dir=group, vmap=vmap)
  _assert_same_runs(uninterrupted, resumed)


@pytest.mark.parametrize('vmap', [True, False])
def test_patience_stops_a_run_while_the_others_go_on(vmap):
  """A run whose validation accuracy stops improving stops updating; its best
  model is the one of its best validation epoch, and the others train on."""
  ds = tiny_dataset(n_train=256)
  sgd = {'optim.optimizer': 'sgd', 'optim.schedule': 'constant'}
  # A zero-ish rate never improves on its first epoch; a good one keeps going.
  configs = [tiny_config(epochs=6, seed=0, patience=2, **sgd, **{'optim.learning_rate': 1e-9}),
             tiny_config(epochs=6, seed=1, patience=2, **sgd, **{'optim.learning_rate': 0.1})]
  slow, good = loop.train_group(configs, ds, vmap=vmap)
  assert slow.status == 'ok' and len(slow.history) == slow.best_epoch + 2 < 6
  assert len(good.history) > len(slow.history)
  again = loop.train_group([configs[0]], ds)[0]  # alone, the same stop
  assert len(again.history) == len(slow.history)
  for res in (slow, good):
    best = res.history[res.best_epoch - 1]
    assert best['val_acc'] == max(h['val_acc'] for h in res.history)
    logits = LeNet5(res.config.model).apply({'params': res.best['params']},
                                            ds.val_images.astype(np.float32) / 255)
    np.testing.assert_allclose(np.mean(np.argmax(logits, -1) == ds.val_labels),
                               best['val_acc'], atol=1 / len(ds.val_labels))


@pytest.mark.cpu_bitwise
def test_groups_of_one_architecture_share_one_compiled_program():
  """A narrower group is padded to the program's width: no new compilation, and
  its runs train bitwise as in a full group."""
  ds = tiny_dataset(n_train=256)
  loop.clear_programs()
  configs = [tiny_config(epochs=1, seed=s) for s in range(3)]
  full = loop.train_group(configs, ds, vmap=True)
  padded = loop.train_group(configs[:2], ds, vmap=True, width=3)
  [program] = loop._PROGRAMS.values()  # pylint: disable=protected-access
  assert len(program.epochs) == 1
  _assert_same_runs(full[:2], padded)


def test_a_signal_during_the_last_epochs_callback_still_stops(tmp_path):
  """SIGINT after the last epoch's check is not dropped: the group checkpoints and
  stops, and the rerun finds every run finished."""
  ds = tiny_dataset(n_train=256)
  configs = [tiny_config(epochs=2, seed=s) for s in (0, 1)]
  group = str(tmp_path / 'group')
  uninterrupted = loop.train_group(configs, ds)
  late = lambda epoch, _: os.kill(os.getpid(), signal.SIGINT) if epoch == 1 else None
  with pytest.raises(KeyboardInterrupt):
    loop.train_group(configs, ds, on_epoch=late, checkpoint_dir=group, checkpoint_every=1e9)
  epochs = []
  resumed = loop.train_group(configs, ds, checkpoint_dir=group,
                             on_epoch=lambda epoch, _: epochs.append(epoch))
  assert epochs == []  # nothing left to train
  _assert_same_runs(uninterrupted, resumed)
