"""The work directory's files (lenet_jax/runs.py): packing finished runs into one file
and reading them back exactly as from their directories."""
import gzip
import json
import os

import numpy as np
import pytest

from lenet_jax import loop
from lenet_jax import runs
from lenet_jax.config import run_id
from test_train import tiny_config

HISTORY = [{'epoch': e, 'train_loss': 1.0 / e, 'train_acc': 0.5, 'val_loss': 1.0,
            'val_acc': 0.5 + e / 100, 'test_loss': 1.0, 'test_acc': 0.5, 'images_per_s': 1e3}
           for e in (1, 2, 3)]


def _finished(workdir, seed, params=False, extra=None):
  """Writes a finished run (as the experiments do); returns its config."""
  cfg = tiny_config(seed=seed)
  res = loop.RunResult(cfg, status='ok', history=HISTORY, train_seconds=1.0)
  runs.write_run(str(workdir), res)
  if params:
    runs.write_params(str(workdir), cfg, {'w': np.arange(6, dtype=np.float32).reshape(2, 3)})
  if extra is not None:
    runs.write_extra(str(workdir), cfg, extra)
  return cfg


def _everything(workdir, configs):
  """What a reader can get of each run, through runs.py."""
  out = {}
  for cfg in configs:
    rid = run_id(cfg)
    out[rid] = (runs.read_finished(str(workdir), cfg), runs.read_history(str(workdir), rid),
                runs.has_params(str(workdir), cfg), runs.read_extra(str(workdir), cfg),
                runs.has_params(str(workdir), cfg) and
                runs.read_params(str(workdir), cfg)['w'].tolist())
  return out


def test_packed_runs_read_back_exactly_as_from_their_directories(tmp_path):
  configs = [_finished(tmp_path, 0, params=True, extra={'shifted_acc': 0.25}),
             _finished(tmp_path, 1, extra={}), _finished(tmp_path, 2)]
  before = _everything(tmp_path, configs)
  assert runs.pack(str(tmp_path)) == 3
  assert not (tmp_path / runs.RUNS_DIR).exists()
  assert sorted(os.listdir(tmp_path)) == [runs.ARCHIVE_FILE]
  assert _everything(tmp_path, configs) == before
  assert [runs.read_config(str(tmp_path), run_id(c)) for c in configs] == configs
  assert runs.run_ids(str(tmp_path)) == sorted(run_id(c) for c in configs)
  # The same runs pack to the same bytes (no time stamp, sorted): a stable git diff.
  first = (tmp_path / runs.ARCHIVE_FILE).read_bytes()
  other = tmp_path / 'other'
  for seed in (2, 0, 1):
    _finished(other, seed, params=seed == 0, extra={'shifted_acc': 0.25} if seed == 0 else
              ({} if seed == 1 else None))
  runs.pack(str(other))
  assert (other / runs.ARCHIVE_FILE).read_bytes() == first


def test_a_run_directory_stands_before_its_packed_copy_and_repacks_over_it(tmp_path):
  cfg = _finished(tmp_path, 0)
  runs.pack(str(tmp_path))
  res = loop.RunResult(cfg, status='ok', history=HISTORY[:2], train_seconds=1.0)
  runs.write_run(str(tmp_path), res)  # trained again: two epochs this time
  assert len(runs.read_history(str(tmp_path), run_id(cfg))) == 2
  assert runs.pack(str(tmp_path)) == 1
  assert len(runs.read_history(str(tmp_path), run_id(cfg))) == 2
  assert runs.read_finished(str(tmp_path), cfg)['epochs_run'] == 2


def test_unfinished_runs_and_a_sweeps_model_files_are_not_packed(tmp_path):
  done = _finished(tmp_path, 0)
  running = tiny_config(seed=1)
  os.makedirs(runs.run_dir(str(tmp_path), running))
  (tmp_path / runs.RUNS_DIR / run_id(running) / runs.CONFIG_FILE).write_text('{}')
  with_models = tiny_config(seed=2)
  runs.write_run(str(tmp_path), loop.RunResult(
      with_models, status='ok', history=HISTORY, params={'w': np.ones(2, np.float32)},
      model_state={}), models=True)
  assert runs.pack(str(tmp_path)) == 1
  assert sorted(os.listdir(tmp_path / runs.RUNS_DIR)) == sorted([run_id(running),
                                                                 run_id(with_models)])
  assert runs.read_finished(str(tmp_path), done)['run_id'] == run_id(done)
  assert runs.read_finished(str(tmp_path), running) is None


def test_a_damaged_packed_run_is_trained_again_and_a_damaged_file_named(tmp_path):
  cfg = _finished(tmp_path, 0)
  other = _finished(tmp_path, 1)
  runs.pack(str(tmp_path))
  path = tmp_path / runs.ARCHIVE_FILE
  with gzip.open(path, 'rt') as f:
    entries = [json.loads(line) for line in f]
  entries[0]['files'][runs.METRICS_FILE] = '{"epoch": 1}\n'  # one epoch of three
  with gzip.open(path, 'wt') as f:
    f.writelines(json.dumps(e) + '\n' for e in entries)
  damaged = cfg if entries[0]['run_id'] == run_id(cfg) else other
  said = []
  assert runs.finished_row(str(tmp_path), damaged, warn=said.append) is None
  assert said == [f'warning: {path}[{run_id(damaged)}]/metrics.jsonl holds 1 epochs, but '
                  'final.json says 3; training the run again']
  path.write_bytes(path.read_bytes()[:40])  # cut off
  with pytest.raises(ValueError, match=f'{path} cannot be read .*restore it from a copy'):
    runs.read_finished(str(tmp_path), cfg)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = sorted(os.path.relpath(os.path.join(d, runs.ARCHIVE_FILE), ROOT)
                   for d, _, files in os.walk(os.path.join(ROOT, 'experiments', 'results'))
                   if runs.ARCHIVE_FILE in files)


def _same(a, b):
  return a == b or (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b))


@pytest.mark.parametrize('archive', COMMITTED)
def test_the_committed_results_are_their_packed_runs(archive):
  """Every row of a committed results.jsonl is a packed run whose final.json it repeats
  (the study's rows report the best-on-validation epoch: its final.json's best_* values,
  the last epoch's kept as last_*), with the per-example answers of that model."""
  workdir = os.path.dirname(os.path.join(ROOT, archive))
  rows = runs.read_results(workdir)
  packed = set(runs.run_ids(workdir))
  assert {r['run_id'] for r in rows} <= packed
  reported = ('val_loss', 'val_acc', 'test_loss', 'test_acc')
  for row in rows:
    final = json.loads(runs.read_run_file(workdir, row['run_id'], runs.FINAL_FILE))
    for key in reported:
      assert _same(row[key], final[f'best_{key}']) and _same(row[f'last_{key}'], final[key])
    assert all(_same(row[k], v) for k, v in final.items() if k not in reported), row['run_id']
    if final['status'] == 'ok':
      bits = runs.read_test_correct(workdir, row['run_id'])
      assert round(bits.mean() * len(bits)) == round(final['best_test_acc'] * len(bits))
    assert len(runs.read_history(workdir, row['run_id'])) == final['epochs_run']


def test_a_damaged_run_directory_falls_back_to_its_packed_copy(tmp_path):
  cfg = _finished(tmp_path, 0)
  runs.pack(str(tmp_path))
  runs.write_run(str(tmp_path), loop.RunResult(cfg, status='ok', history=HISTORY))
  (tmp_path / runs.RUNS_DIR / run_id(cfg) / runs.METRICS_FILE).write_text('{"epoch": 1}\n')
  said = []
  row = runs.finished_row(str(tmp_path), cfg, warn=said.append)
  assert row is not None and row['epochs_run'] == 3
  assert said[0].endswith('and using its packed copy')


def test_a_pack_killed_while_removing_leaves_no_half_run(tmp_path):
  """What a killed pack leaves (a renamed, half-removed directory) is not a run, and the
  next pack removes it."""
  cfg = _finished(tmp_path, 0)
  other = _finished(tmp_path, 1)
  runs.pack(str(tmp_path))
  half = tmp_path / runs.RUNS_DIR / f'{run_id(cfg)}.packed-12345'
  half.mkdir(parents=True)
  (half / runs.CONFIG_FILE).write_text('{}')
  assert runs.read_finished(str(tmp_path), cfg)['run_id'] == run_id(cfg)
  assert runs.run_ids(str(tmp_path)) == sorted([run_id(cfg), run_id(other)])
  _finished(tmp_path, 2)
  runs.pack(str(tmp_path))
  assert not (tmp_path / runs.RUNS_DIR).exists()
