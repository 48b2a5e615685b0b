"""Faults and scale: kill -9 and resume, interrupted sweeps, shards and merge,
TensorBoard files, and the catalogue of bad inputs."""
import csv
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import on_cpu, requires
from lenet_jax import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(idx_dir, workdir, *args):
  return [sys.executable, os.path.join(ROOT, 'run.py'), '--dataset=mnist',
          f'--idx_dir={idx_dir}', '--validation_size=200', '--channels=4,8', '--dense=16',
          '--batch_size=16', f'--workdir={workdir}', '--cache_dir=', '--notensorboard', *args]


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
  """run id -> that run's final parameters, for every run in `workdir`."""
  return {os.path.basename(run): runs.read_variables(run)['params']
          for run in glob.glob(os.path.join(workdir, 'runs', '*'))}


def _checkpoints(workdir):
  """The group checkpoints (complete orbax steps) in `workdir`."""
  return [p for p in glob.glob(os.path.join(workdir, 'groups', '*', '*'))
          if os.path.basename(p).isdigit()]


def _assert_same_params(want, got):
  """The same runs, each with bitwise the same final parameters."""
  assert want and sorted(got) == sorted(want)
  for run, layers in want.items():
    for layer in layers:
      for name in layers[layer]:
        np.testing.assert_array_equal(got[run][layer][name], layers[layer][name])


@pytest.mark.cpu_bitwise
def test_sigkill_in_an_epoch_then_rerun_gives_identical_parameters(idx_dir, tmp_path):
  clean, killed = str(tmp_path / 'clean'), str(tmp_path / 'killed')
  assert _run(_cmd(idx_dir, clean, '--epochs=4')).returncode == 0
  cmd = _cmd(idx_dir, killed, '--epochs=4', '--checkpoint_every_secs=0')
  # Kill once the first epoch's checkpoint is complete: the second epoch is under way.
  assert _kill_when(cmd, lambda: glob.glob(os.path.join(killed, 'groups', '*', '1')))
  assert not glob.glob(os.path.join(killed, 'runs', '*', 'final.json'))
  proc = _run(cmd)
  assert proc.returncode == 0, proc.stderr
  want = _final_params(clean)
  assert len(want) == 1
  _assert_same_params(want, _final_params(killed))
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


@pytest.mark.cpu_bitwise
def test_three_shards_merged_equal_the_unsplit_sweep(idx_dir, tmp_path):
  sweep = ['--epochs=1', '--learning_rate=1e-3,3e-3', '--kernel_size=3', '--kernel_size=5',
           '--seeds=2', '--max_models=2']
  whole, split = str(tmp_path / 'whole'), str(tmp_path / 'split')
  assert _run(_cmd(idx_dir, whole, *sweep)).returncode == 0
  for i in range(3):
    proc = _run(_cmd(idx_dir, split, *sweep, '--num_shards=3', f'--shard_index={i}'))
    assert proc.returncode == 0, proc.stderr
  os.makedirs(tmp_path / 'none')
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


@requires('tensorflow', 'tensorboardX')
def test_tensorboard_event_files_with_hyperparameters(idx_dir, tmp_path):
  from tensorflow.compat.v1 import train as tf_train  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / 'tb')
  assert _run(_cmd(idx_dir, workdir, '--epochs=2', '--seeds=2', '--tensorboard')).returncode == 0
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
    # Far beyond this machine's memory: refused from the analytic trace, at once.
    (['--channels=100000,16'], 'channels=(100000, 16), dense=(16,), batch_size=16, '
                               'eval_batch_size=1000) needs about'),
    (['--dense=2000000000'], 'GiB of available memory (MemAvailable) here. Use fewer '
                             'channels or dense units'),
])
def test_bad_workdirs_and_shards(idx_dir, tmp_path, args, message):
  start = time.time()
  proc = _run(_cmd(idx_dir, str(tmp_path / 'w'), '--epochs=1', *args))
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr
  assert 'Traceback' not in proc.stderr and time.time() - start < 60


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
for r in results:  # the best models' answers, computed over the devices too
  assert r.test_correct.sum() == round(r.history[r.best_epoch - 1]['test_acc'] * 200)
np.savez({out!r}, *[leaf for r in results for leaf in jax.tree.leaves(r.params)])
'''


def _train_on_forced_devices(tmp_path, devices: int, runs: int):
  """Trains `runs` tiny runs in a process with `devices` CPU devices: (params, log)."""
  out = str(tmp_path / f'{devices}.npz')
  code = _ON_DEVICES.format(root=ROOT, tests=os.path.join(ROOT, 'tests'), out=out, runs=runs)
  # Forced host devices are CPU devices, on any machine.
  env = {**_env(), 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
         'JAX_PLATFORMS': 'cpu'}
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


def _write_dataset(directory, n_train, n_test, seed):
  from conftest import separable_images, write_idx  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  os.makedirs(directory)
  for prefix, n in (('train', n_train), ('t10k', n_test)):
    images, labels = separable_images(n, rng)
    write_idx(os.path.join(directory, f'{prefix}-images-idx3-ubyte.gz'), images)
    write_idx(os.path.join(directory, f'{prefix}-labels-idx1-ubyte.gz'), labels)


def test_every_row_of_a_data_sweep_trains_on_its_own_data(tmp_path):
  store = str(tmp_path / 'store')
  _write_dataset(os.path.join(store, 'mnist'), 700, 100, seed=1)
  _write_dataset(os.path.join(store, 'fashion_mnist'), 900, 200, seed=2)
  workdir = str(tmp_path / 'w')
  cmd = [sys.executable, os.path.join(ROOT, 'run.py'), f'--idx_dir={store}',
         '--dataset=mnist,fashion_mnist', '--validation_size=100,300', '--channels=4,8',
         '--dense=16', '--batch_size=50', '--epochs=1', f'--workdir={workdir}', '--cache_dir=']
  proc = _run(cmd)
  assert proc.returncode == 0, proc.stderr
  got = {(r['data.dataset'], r['data.validation_size']):
         (r['data_source'], r['train_size'], r['val_size'], r['test_size'])
         for r in _rows(os.path.join(workdir, 'results.csv'))}
  mnist, fashion = f'idx:{store}/mnist', f'idx:{store}/fashion_mnist'
  assert got == {('mnist', '100'): (mnist, '600', '100', '100'),
                 ('mnist', '300'): (mnist, '400', '300', '100'),
                 ('fashion_mnist', '100'): (fashion, '800', '100', '200'),
                 ('fashion_mnist', '300'): (fashion, '600', '300', '200')}
  # One set of files under two dataset names is refused before training.
  proc = _run([c.replace(f'--idx_dir={store}', f'--idx_dir={store}/mnist') for c in cmd[:-2]]
              + [f'--workdir={tmp_path / "w2"}', '--cache_dir='])
  assert proc.returncode == 2, proc.stderr
  assert "dataset='mnist' and dataset='fashion_mnist' would both read the IDX files" in proc.stderr


def test_a_workdir_is_never_resumed_in_the_other_group_mode(idx_dir, tmp_path):
  workdir = str(tmp_path / 'w')
  sweep = ['--epochs=1', '--seeds=2']
  assert _run(_cmd(idx_dir, workdir, *sweep, '--group_mode=in_turn')).returncode == 0
  proc = _run(_cmd(idx_dir, workdir, *sweep, '--group_mode=vmap'))
  assert proc.returncode == 2
  assert "was trained with group mode 'in_turn'" in proc.stderr
  assert 'resume with --group_mode=in_turn' in proc.stderr
  recorded = json.load(open(os.path.join(workdir, 'sweep.json')))['execution']
  assert recorded == {'group_mode': 'in_turn', 'max_models': 8}
  assert {r['group_mode'] for r in _rows(os.path.join(workdir, 'results.csv'))} == {'in_turn'}
  # Stacked, the group size decides the last bits too.
  stacked = str(tmp_path / 'stacked')
  assert _run(_cmd(idx_dir, stacked, *sweep, '--group_mode=vmap')).returncode == 0
  proc = _run(_cmd(idx_dir, stacked, *sweep, '--group_mode=vmap', '--max_models=1'))
  assert proc.returncode == 2 and '--max_models 8 then, 1 now' in proc.stderr
  assert 'resume with --group_mode=vmap --max_models=8' in proc.stderr


@pytest.mark.cpu_bitwise
def test_a_vmap_sweep_killed_mid_group_resumes_to_the_uninterrupted_results(idx_dir, tmp_path):
  sweep = ['--epochs=3', '--seeds=2', '--learning_rate=1e-3,3e-3', '--group_mode=vmap',
           '--tensorboard=false']
  clean, killed = str(tmp_path / 'clean'), str(tmp_path / 'killed')
  assert _run(_cmd(idx_dir, clean, *sweep)).returncode == 0
  cmd = _cmd(idx_dir, killed, *sweep, '--checkpoint_every_secs=0')
  # The group's first checkpoint: its 4 runs have done one epoch each.
  assert _kill_when(cmd, lambda: _checkpoints(killed))
  proc = _run(cmd)
  assert proc.returncode == 0, proc.stderr
  key = lambda rows: {r['run_id']: (r['train_loss'], r['val_acc'], r['test_acc'])
                      for r in rows}
  assert key(_rows(os.path.join(killed, 'results.csv'))) == key(
      _rows(os.path.join(clean, 'results.csv')))
  want = _final_params(clean)  # every member's final parameters, bitwise
  assert len(want) == 4
  _assert_same_params(want, _final_params(killed))


# Execs the command with SIGINT at its default, as in a terminal: a pytest started
# in the background by a non-interactive shell (`pytest &`) ignores SIGINT, and an
# ignored signal stays ignored across exec, so the run would never see Ctrl-C.
# (A preexec_fn would fork the multithreaded JAX process instead.)
_WITH_DEFAULT_SIGINT = ('import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); '
                        'os.execv(sys.argv[1], sys.argv[1:])')


def _start(cmd):
  return subprocess.Popen([sys.executable, '-c', _WITH_DEFAULT_SIGINT, *cmd],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT, env=_env())


def _wait_for(condition, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if condition():
      return
    time.sleep(0.05)
  raise AssertionError('timed out')


def test_a_second_process_on_a_workdir_or_shard_is_refused_with_the_holders_pid(
    idx_dir, tmp_path):
  from lenet_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / 'w'
  workdir.mkdir()
  with workdir_lib.Lock(str(workdir / '.lock'), 'this workdir'):
    proc = _run(_cmd(idx_dir, str(workdir), '--epochs=1'))
    assert proc.returncode == 2, proc.stderr
    assert f'--workdir={workdir} is in use by process {os.getpid()}' in proc.stderr
  sweep = ['--epochs=1', '--seeds=2', '--max_models=1', '--num_shards=2']
  with workdir_lib.Lock(str(workdir / '.lock.shard-0-of-2'), 'shard 0'):
    busy = _run(_cmd(idx_dir, str(workdir), *sweep, '--shard_index=0'))
    assert busy.returncode == 2 and f'shard 0 of 2 in --workdir={workdir} is in use by ' \
        f'process {os.getpid()}' in busy.stderr
    other = _run(_cmd(idx_dir, str(workdir), *sweep, '--shard_index=1'))
    assert other.returncode == 0, other.stderr  # the other shard runs beside it
  assert open(workdir / '.lock.shard-1-of-2').read() == ''  # released


@pytest.mark.cpu_bitwise
def test_ctrl_c_and_sigterm_checkpoint_the_epoch_in_progress_and_resume_exactly(
    idx_dir, tmp_path):
  """At the default cadence nothing is saved mid-run: the signal's own checkpoint
  (after the epoch in progress) is what the rerun resumes from."""
  clean = str(tmp_path / 'clean')
  assert _run(_cmd(idx_dir, clean, '--epochs=12')).returncode == 0
  want = _final_params(clean)
  assert len(want) == 1
  for sig in (signal.SIGINT, signal.SIGTERM):
    stopped = str(tmp_path / sig.name)
    cmd = _cmd(idx_dir, stopped, '--epochs=12')
    proc = _start(cmd)
    for line in proc.stdout:  # training has begun
      if '] epoch 1/12' in line:
        break
    assert proc.poll() is None and not _checkpoints(stopped)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (sig, stderr)
    assert 'interrupted; every finished run and epoch checkpoint is in' in stderr
    assert 'Traceback' not in stderr
    assert len(_checkpoints(stopped)) == 1  # the signal's
    assert not glob.glob(os.path.join(stopped, '**', '*.tmp[0-9]*'), recursive=True)
    resumed = _run(cmd)
    assert resumed.returncode == 0
    assert '] epoch 1/12' not in resumed.stdout  # it did not start over
    _assert_same_params(want, _final_params(stopped))


def test_damaged_result_files_are_rebuilt_or_retrained(idx_dir, tmp_path):
  workdir = str(tmp_path / 'w')
  cmd = _cmd(idx_dir, workdir, '--epochs=1', '--seeds=3', '--tensorboard=false')
  assert _run(cmd).returncode == 0
  rows = _rows(os.path.join(workdir, 'results.csv'))
  ids = [r['run_id'] for r in rows]
  run = lambda i, name: os.path.join(workdir, 'runs', ids[i], name)
  # Garbage tables, a garbage final.json, a garbage config.json, stale temporaries.
  for name in ('results.csv', 'results.jsonl'):
    with open(os.path.join(workdir, name), 'w') as f:
      f.write('garbage\x00')
  with open(run(0, 'final.json'), 'w') as f:
    f.write('{"truncated')
  with open(run(1, 'config.json'), 'w') as f:
    f.write('[]')
  stale = [os.path.join(workdir, 'results.csv.tmp999999999'), run(2, 'final.json.tmp999999999')]
  for path in stale:
    with open(path, 'w') as f:
      f.write('partial')
  group = os.path.join(workdir, 'groups', hashlib.sha256(
      ','.join(ids).encode()).hexdigest()[:12])  # the sweep's one group (runs.group_dir)
  orbax_tmp = os.path.join(group, '2.orbax-checkpoint-tmp-1234')
  os.makedirs(orbax_tmp)
  proc = _run(cmd)
  assert proc.returncode == 0, proc.stderr
  assert f'{run(0, "final.json")} cannot be read' in proc.stdout
  assert f'{run(1, "config.json")} is not the config of run {ids[1]}' in proc.stdout
  assert proc.stdout.count('training it again') == 2
  assert len(glob.glob(os.path.join(workdir, 'runs', '*.unreadable-*'))) == 2
  assert not any(os.path.exists(p) for p in stale + [orbax_tmp])
  again = _rows(os.path.join(workdir, 'results.csv'))
  assert [r['run_id'] for r in again] == ids
  if on_cpu():  # retrained exactly (bitwise is asserted on the CPU only)
    assert [r['test_acc'] for r in again] == [r['test_acc'] for r in rows]
  assert len(open(os.path.join(workdir, 'results.jsonl')).readlines()) == 3
  # A run's final.json copied into another run's directory is not counted twice.
  shutil.copy(run(0, 'final.json'), run(1, 'final.json'))
  merged = _run(cmd + ['--merge'])
  assert merged.returncode == 1
  assert f'unreadable: {run(1, "final.json")} belongs to run {ids[0]!r}, not to {ids[1]}' in (
      merged.stdout)
  assert '2 of 3 runs finished' in merged.stdout
  # A garbage sweep.json blocks nothing silently: it is named.
  with open(os.path.join(workdir, 'sweep.json'), 'w') as f:
    f.write('{')
  proc = _run(cmd)
  assert proc.returncode == 2 and f'{workdir}/sweep.json cannot be read' in proc.stderr


def test_merge_and_empty_shards_never_name_a_file_they_did_not_write(idx_dir, tmp_path):
  missing = _run(_cmd(idx_dir, str(tmp_path / 'nowhere'), '--epochs=1', '--merge'))
  assert missing.returncode == 2 and 'does not exist, so there is nothing to merge' in (
      missing.stderr)
  os.makedirs(tmp_path / 'empty')
  empty = _run(_cmd(idx_dir, str(tmp_path / 'empty'), '--epochs=1', '--merge'))
  assert empty.returncode == 1
  assert 'none in' in empty.stdout and 'so no results.csv was written' in empty.stdout
  assert 'results: ' not in empty.stdout and not os.path.exists(tmp_path / 'empty' / 'results.csv')
  shard = _run(_cmd(idx_dir, str(tmp_path / 's'), '--epochs=1', '--num_shards=3',
                    '--shard_index=2'))
  assert shard.returncode == 0 and 'shard 2 of 3 has no runs' in shard.stdout
  assert 'results' not in shard.stdout


def test_a_full_disk_is_named_and_what_finished_is_kept(idx_dir, tmp_path):
  mount = tmp_path / 'small'
  mount.mkdir()
  # A finished run keeps about 60 kB here (no TensorBoard files) and asks for
  # about 300 kB free before its files are written (runs.RUN_FILES_BYTES and its
  # two models) while its group's checkpoint, about 190 kB, still stands:
  # 768 kB holds about six runs, the first with some 280 kB to spare, and 8 never.
  done = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=768k', 'tmpfs', str(mount)],
                        capture_output=True, text=True)
  assert done.returncode == 0, f'this test mounts a small tmpfs, as root: {done.stderr}'
  try:
    workdir = str(mount / 'w')
    proc = _run(_cmd(idx_dir, workdir, '--epochs=2', '--seeds=8', '--max_models=1'))
    assert proc.returncode == 1, proc.stderr
    assert 'Traceback' not in proc.stderr
    assert f'error: no space left on the device that holds {workdir}/runs/' in proc.stderr
    assert 'free some space there and run the same command again' in proc.stderr
    finished = glob.glob(os.path.join(workdir, 'runs', '*', 'final.json'))
    assert finished, 'the disk should fill after some runs finished'
    for path in finished:  # whole, readable files
      assert json.load(open(path))['status'] == 'ok'
    assert len(_rows(os.path.join(workdir, 'results.csv'))) == len(finished)
  finally:
    subprocess.run(['umount', str(mount)], check=True)


def test_what_the_data_split_decides_is_checked_for_every_point_before_training(
    idx_dir, tmp_path):
  """A later point whose batch exceeds the training set left after validation is
  refused before the earlier points train."""
  workdir = str(tmp_path / 'w')
  proc = _run(_cmd(idx_dir, workdir, '--epochs=1', '--batch_size=32,1100'))
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert ('batch_size=1100 is larger than the 1000 training examples of mnist (after 200 '
          'are held out for validation)') in proc.stderr
  assert not glob.glob(os.path.join(workdir, 'runs', '*', 'final.json'))


def test_shards_need_a_workdir_and_merge_names_a_sweep_that_differs(idx_dir, tmp_path):
  no_workdir = [c for c in _cmd(idx_dir, '', '--epochs=1', '--num_shards=2')
                if not c.startswith('--workdir')]
  proc = _run(no_workdir)
  assert proc.returncode == 2 and '--num_shards=2 splits a sweep' in proc.stderr
  assert 'give --workdir=DIR' in proc.stderr
  workdir = str(tmp_path / 'w')
  sweep = ['--epochs=1', '--learning_rate=1e-3,3e-3', '--num_shards=2']
  assert _run(_cmd(idx_dir, workdir, *sweep, '--shard_index=0')).returncode == 0
  merged = _run(_cmd(idx_dir, workdir, '--epochs=1', '--learning_rate=1e-3,2e-3', '--merge'))
  assert merged.returncode == 2 and 'Traceback' not in merged.stderr
  assert ('holds another sweep than these flags describe (axes.optim.learning_rate: '
          '[0.001, 0.003] there, [0.001, 0.002] here') in merged.stderr
  assert 'give --merge the flags the shards ran with' in merged.stderr
