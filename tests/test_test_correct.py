"""Per-example test correctness of a run's best model (RunResult.test_correct,
runs/<id>/test_correct.bits): it counts exactly to the best epoch's test
accuracy, in turn and stacked, resumed, packed; none for a diverged run."""
import json
import os

import numpy as np
import pytest

from conftest import on_cpu
from lenet_jax import data, loop, runs
from lenet_jax.config import run_id
from test_train import tiny_config, tiny_dataset

SGD = {'optim.optimizer': 'sgd', 'optim.schedule': 'constant'}


def _noisy_dataset():
  """tiny_dataset with 30% of the labels of every split redrawn: accuracies in
  between, and validation accuracy that goes up and down."""
  ds = tiny_dataset(n_train=256)
  rng = np.random.default_rng(1)

  def redraw(labels):
    labels = labels.copy()
    hit = rng.random(len(labels)) < 0.3
    labels[hit] = rng.integers(0, 10, hit.sum())
    return labels

  return data.Dataset(ds.name, ds.source, ds.train_images, redraw(ds.train_labels),
                      ds.val_images, redraw(ds.val_labels), ds.test_images,
                      redraw(ds.test_labels))


def _configs(normalization='none', epochs=4, **overrides):
  return [tiny_config(epochs=epochs, seed=seed, patience=1, **SGD,
                      **{'optim.learning_rate': 0.3, 'model.normalization': normalization},
                      **overrides) for seed in (0, 1)]


def _assert_counts_to_best_epoch(res, n_test):
  """Exactly the best epoch's test accuracy (counts, not floats)."""
  bits = res.test_correct
  assert bits.dtype == bool and bits.shape == (n_test,)
  best = res.history[res.best_epoch - 1]['test_acc']
  assert int(bits.sum()) == round(best * n_test)
  assert bits.mean() == best


@pytest.mark.parametrize('normalization', ['none', 'batch'])
@pytest.mark.parametrize('vmap', [False, True])
def test_the_best_models_answers_count_to_its_test_accuracy(vmap, normalization):
  ds = _noisy_dataset()
  results = loop.train_group(_configs(normalization), ds, vmap=vmap)
  assert results[0].facts['group_mode'] == ('vmap' if vmap else 'in_turn')
  for res in results:
    assert res.status == 'ok'
    _assert_counts_to_best_epoch(res, len(ds.test_labels))
  if on_cpu() and normalization == 'none':  # patience stopped a run after a worse epoch
    res = results[0]
    assert res.best_epoch < len(res.history)
    assert res.history[-1]['test_acc'] != res.history[res.best_epoch - 1]['test_acc']


def test_written_and_packed_runs_keep_them(tmp_path):
  ds = _noisy_dataset()
  sgd_bad = tiny_config(epochs=4, seed=2, patience=1, **SGD,
                        **{'optim.learning_rate': 1e12})
  configs = _configs() + [sgd_bad]
  results = loop.train_group(configs, ds, vmap=True)
  assert [r.status for r in results] == ['ok', 'ok', 'diverged']
  assert results[2].test_correct is None
  workdir = str(tmp_path / 'w')
  rows = [runs.write_run(workdir, res) for res in results]
  assert all('test_correct' not in key for row in rows for key in row)  # not in results rows
  for res in results[:2]:
    final = json.loads(runs.read_run_file(workdir, run_id(res.config), runs.FINAL_FILE))
    bits = runs.read_test_correct(workdir, res.config)
    np.testing.assert_array_equal(bits, res.test_correct)
    assert int(bits.sum()) == round(final['best_test_acc'] * final['test_size'])
  assert runs.read_test_correct(workdir, configs[2]) is None
  assert not os.path.exists(os.path.join(runs.run_dir(workdir, configs[2]),
                                         runs.TEST_CORRECT_FILE))
  before = [runs.read_test_correct(workdir, run_id(c)) for c in configs]
  assert runs.pack(workdir) == 3
  assert not os.path.exists(os.path.join(workdir, runs.RUNS_DIR))
  after = [runs.read_test_correct(workdir, run_id(c)) for c in configs]
  for a, b in zip(before, after):
    assert (a is None and b is None) or np.array_equal(a, b)
  # The same runs written again pack to the same bytes.
  again = str(tmp_path / 'again')
  for res in reversed(results):
    runs.write_run(again, res)
  runs.pack(again)
  assert (open(os.path.join(workdir, runs.ARCHIVE_FILE), 'rb').read()
          == open(os.path.join(again, runs.ARCHIVE_FILE), 'rb').read())


def test_a_run_written_without_them_reads_none_and_a_rewrite_drops_old_ones(tmp_path):
  cfg = tiny_config()
  history = [{'epoch': 1, 'train_loss': 1.0, 'train_acc': 0.5, 'val_loss': 1.0,
              'val_acc': 0.5, 'test_loss': 1.0, 'test_acc': 0.5, 'images_per_s': 1e3}]
  res = loop.RunResult(cfg, status='ok', history=history,
                       test_correct=np.array([True, False] * 5))
  runs.write_run(str(tmp_path), res)
  assert runs.read_test_correct(str(tmp_path), cfg).tolist() == [True, False] * 5
  runs.write_run(str(tmp_path), loop.RunResult(cfg, status='ok', history=history))
  assert runs.read_test_correct(str(tmp_path), run_id(cfg)) is None


@pytest.mark.parametrize('count', [0, 1, 7, 8, 9, 10_000])
def test_the_bits_file_roundtrips_any_count(count):
  bits = np.random.default_rng(count).random(count) < 0.5
  data_ = runs.encode_bits(bits)
  assert len(data_) == 8 + -(-count // 8)
  np.testing.assert_array_equal(runs.decode_bits(data_), bits)
  with pytest.raises(ValueError, match='bytes of bits for a count'):
    runs.decode_bits(data_ + b'\0')


def test_a_resumed_group_scores_the_best_models_of_its_checkpoint(tmp_path):
  ds = _noisy_dataset()
  configs = _configs(epochs=3)
  group = str(tmp_path / 'group')
  stopped = loop.train_group(configs, ds, on_epoch=lambda epoch, _: epoch == 0,
                             checkpoint_dir=group, checkpoint_every=0)
  assert [len(r.history) for r in stopped] == [1, 1]
  resumed = loop.train_group(configs, ds, checkpoint_dir=group)
  for res in resumed:
    assert [h['epoch'] for h in res.history][0] == 1
    _assert_counts_to_best_epoch(res, len(ds.test_labels))
  # Nothing left to train: the best models come from the checkpoint alone.
  trained = []
  again = loop.train_group(configs, ds, checkpoint_dir=group,
                           on_epoch=lambda epoch, _: trained.append(epoch))
  assert trained == []
  for a, b in zip(resumed, again):
    _assert_counts_to_best_epoch(b, len(ds.test_labels))
    np.testing.assert_array_equal(a.test_correct, b.test_correct)


def test_none_without_kept_models():
  [res] = loop.train_group(_configs(epochs=1)[:1], _noisy_dataset(), keep_params=False)
  assert res.status == 'ok' and res.test_correct is None
