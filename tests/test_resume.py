"""Faults and scale: kill -9 and resume, interrupted sweeps, shards and merge,
TensorBoard files, and the catalogue of bad inputs."""
import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lenet_jax.checkpoint import RunCheckpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(idx_dir, workdir, *args):
  return [sys.executable, os.path.join(ROOT, 'run.py'), '--dataset=mnist',
          f'--idx_dir={idx_dir}', '--validation_size=200', '--channels=4,8', '--dense=16',
          '--batch_size=16', f'--workdir={workdir}', '--cache_dir=', *args]


def _env():
  return {**os.environ, 'PYTHONPATH': ROOT}


def _run(cmd):
  return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(),
                        timeout=600)


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _kill_when(cmd, ready, timeout=300):
  """Starts `cmd`, SIGKILLs it as soon as ready() is true; returns whether it was killed."""
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          cwd=ROOT, env=_env())
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if ready():
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      return True
    time.sleep(0.02)
  proc.wait()
  return False


def _final_params(workdir):
  [run] = glob.glob(os.path.join(workdir, 'runs', '*'))
  return RunCheckpoints(os.path.join(run, 'checkpoints')).final_params()


def test_sigkill_in_an_epoch_then_rerun_gives_identical_parameters(idx_dir, tmp_path):
  clean, killed = str(tmp_path / 'clean'), str(tmp_path / 'killed')
  assert _run(_cmd(idx_dir, clean, '--epochs=4')).returncode == 0
  cmd = _cmd(idx_dir, killed, '--epochs=4')
  # Kill once the first epoch's checkpoint is complete: the second epoch is under way.
  assert _kill_when(cmd, lambda: glob.glob(os.path.join(killed, 'runs', '*', 'checkpoints', '1')))
  assert not glob.glob(os.path.join(killed, 'runs', '*', 'final.json'))
  proc = _run(cmd)
  assert proc.returncode == 0, proc.stderr
  want, got = _final_params(clean), _final_params(killed)
  for layer in want:
    for name in want[layer]:
      np.testing.assert_array_equal(got[layer][name], want[layer][name])
  assert _rows(os.path.join(killed, 'results.csv'))[0]['test_acc'] == _rows(
      os.path.join(clean, 'results.csv'))[0]['test_acc']


def test_an_interrupted_sweep_reruns_to_every_run_exactly_once(idx_dir, tmp_path):
  workdir = str(tmp_path / 'sweep')
  # One run per group, so the runs finish one after another.
  cmd = _cmd(idx_dir, workdir, '--epochs=2', '--learning_rate=1e-3,3e-3', '--seeds=2',
             '--max_models=1')
  finals = lambda: glob.glob(os.path.join(workdir, 'runs', '*', 'final.json'))
  assert _kill_when(cmd, lambda: len(finals()) >= 1)
  before = len(finals())
  assert 1 <= before < 4
  proc = _run(cmd)
  assert proc.returncode == 0, proc.stderr
  assert f'{before} of 4 runs already finished' in proc.stdout
  rows = _rows(os.path.join(workdir, 'results.csv'))
  assert len(rows) == 4 and len({r['run_id'] for r in rows}) == 4
  assert all(r['status'] == 'ok' for r in rows)


def test_three_shards_merged_equal_the_unsplit_sweep(idx_dir, tmp_path):
  sweep = ['--epochs=1', '--learning_rate=1e-3,3e-3', '--kernel_size=3', '--kernel_size=5',
           '--seeds=2', '--max_models=2']
  whole, split = str(tmp_path / 'whole'), str(tmp_path / 'split')
  assert _run(_cmd(idx_dir, whole, *sweep)).returncode == 0
  for i in range(3):
    proc = _run(_cmd(idx_dir, split, *sweep, '--num_shards=3', f'--shard_index={i}'))
    assert proc.returncode == 0, proc.stderr
  partial = _run(_cmd(idx_dir, str(tmp_path / 'none'), *sweep, '--merge'))
  assert partial.returncode == 1 and partial.stdout.count('missing: ') == 8
  merged = _run(_cmd(idx_dir, split, *sweep, '--merge'))
  assert merged.returncode == 0, merged.stderr
  assert '8 of 8 runs finished' in merged.stdout
  key = lambda rows: {r['run_id']: (r['status'], r['val_acc'], r['test_acc'], r['train_loss'])
                      for r in rows}
  assert key(_rows(os.path.join(split, 'results.csv'))) == key(
      _rows(os.path.join(whole, 'results.csv')))
  assert [r['run_id'] for r in _rows(os.path.join(split, 'results.csv'))] == [
      r['run_id'] for r in _rows(os.path.join(whole, 'results.csv'))]


def test_tensorboard_event_files_with_hyperparameters(idx_dir, tmp_path):
  from tensorflow.compat.v1 import train as tf_train  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / 'tb')
  assert _run(_cmd(idx_dir, workdir, '--epochs=2', '--seeds=2')).returncode == 0
  runs = glob.glob(os.path.join(workdir, 'runs', '*'))
  assert len(runs) == 2
  for run in runs:
    tags, hparams = set(), False
    for path in glob.glob(os.path.join(run, 'tensorboard', '**', 'events.*'), recursive=True):
      for event in tf_train.summary_iterator(path):
        for value in event.summary.value:
          tags.add(value.tag)
          hparams |= value.metadata.plugin_data.plugin_name == 'hparams'
    assert {'train/loss', 'validation/accuracy', 'test/accuracy', 'learning_rate',
            'images_per_s'} <= tags
    assert hparams


@pytest.mark.parametrize('args, message', [
    (['--workdir=/proc/version/sub'], 'is not writable'),
    (['--num_shards=3', '--shard_index=3'], '--shard_index=3 must be in 0..2'),
])
def test_bad_workdirs_and_shards(idx_dir, tmp_path, args, message):
  proc = _run(_cmd(idx_dir, str(tmp_path / 'w'), '--epochs=1', *args))
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_a_workdir_of_another_sweep_is_refused(idx_dir, tmp_path):
  workdir = str(tmp_path / 'w')
  assert _run(_cmd(idx_dir, workdir, '--epochs=1')).returncode == 0
  proc = _run(_cmd(idx_dir, workdir, '--epochs=1', '--learning_rate=3e-3'))
  assert proc.returncode == 2 and 'holds results of a different sweep' in proc.stderr
  assert len(_rows(os.path.join(workdir, 'results.csv'))) == 1  # nothing lost


def test_a_diverging_run_in_a_sweep_is_recorded(idx_dir, tmp_path):
  workdir = str(tmp_path / 'w')
  proc = _run(_cmd(idx_dir, workdir, '--epochs=2', '--optimizer=sgd', '--schedule=constant',
                   '--learning_rate=0.05,1e12'))
  assert proc.returncode == 0, proc.stderr
  assert 'diverged (non-finite loss) in epoch 1; the sweep goes on' in proc.stdout
  rows = {r['optim.learning_rate']: r for r in _rows(os.path.join(workdir, 'results.csv'))}
  assert rows['1000000000000.0']['status'] == 'diverged'
  assert rows['1000000000000.0']['diverged_epoch'] == '1'
  assert rows['0.05']['status'] == 'ok'
  final = json.load(open(glob.glob(os.path.join(workdir, 'runs', '*', 'final.json'))[0]))
  assert final['status'] in ('ok', 'diverged')


_ON_DEVICES = '''
import logging, sys, numpy as np, jax
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
logging.basicConfig(level=logging.INFO)
from test_train import tiny_dataset, tiny_config
from lenet_jax import loop
results = loop.train_group([tiny_config(epochs=2, seed=s) for s in range({runs})],
                           tiny_dataset(), vmap=True)
print('devices', jax.local_device_count())
np.savez({out!r}, *[leaf for r in results for leaf in jax.tree.leaves(r.params)])
'''


def _train_on_forced_devices(tmp_path, devices: int, runs: int):
  """Trains `runs` tiny runs in a process with `devices` CPU devices: (params, log)."""
  out = str(tmp_path / f'{devices}.npz')
  code = _ON_DEVICES.format(root=ROOT, tests=os.path.join(ROOT, 'tests'), out=out, runs=runs)
  env = {**_env(), 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr
  assert f'devices {devices}' in proc.stdout
  return np.load(out), proc.stderr


@pytest.mark.parametrize('runs, log, rtol', [
    (4, 'sharding 4 stacked runs over 4 devices', 2e-4),  # the model axis
    (1, 'splitting each batch of 64 over 4 devices', 1e-4),  # one run, data parallel
])
def test_four_devices_match_one_device(tmp_path, runs, log, rtol):
  one, _ = _train_on_forced_devices(tmp_path, 1, runs)
  four, stderr = _train_on_forced_devices(tmp_path, 4, runs)
  assert log in stderr
  assert len(one.files) == len(four.files) > 0
  for name in one.files:
    np.testing.assert_allclose(four[name], one[name], rtol=rtol, atol=2e-5)
