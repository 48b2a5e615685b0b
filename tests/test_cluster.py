"""A sweep as a job array (lenet_jax/cluster.py) through submitit's LocalExecutor, which
starts real processes: one task warned as SLURM warns before a time limit (SIGUSR2)
saves its epoch and is requeued, one killed outright is submitted again, and the
merged results equal a one-process run's."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from absl import flags

from conftest import requires
from lenet_jax import cli
from lenet_jax import cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPARED = ('status', 'epochs_run', 'train_loss', 'train_acc', 'val_loss', 'val_acc',
            'test_loss', 'test_acc', 'best_epoch', 'best_val_acc', 'data_fingerprint')


def _sweep(idx_dir, epochs=20):
  """4 runs in 2 groups of 2 (one per task), enough epochs to be stopped in the middle."""
  return ['--dataset=mnist', f'--idx_dir={idx_dir}', '--validation_size=200',
          '--channels=4,8', '--learning_rate=1e-3,3e-3', '--dense=16', f'--epochs={epochs}',
          '--batch_size=100', '--seeds=2', '--notensorboard', '--cache_dir=',
          '--checkpoint_every_secs=0', '--max_models=2']


def _run_py(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'run.py'), *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=600,
                        env={**os.environ, 'PYTHONPATH': ROOT})


def _rows(workdir):
  with open(os.path.join(workdir, 'results.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return {r['run_id']: {k: r.get(k) for k in COMPARED} for r in rows}


def _task_pid(job):
  """The task process the local controller started for `job` (Linux /proc)."""
  controller = job._process.pid  # pylint: disable=protected-access
  with open(f'/proc/{controller}/task/{controller}/children') as f:
    [pid] = f.read().split()
  return int(pid)


def _when_at_epoch(job, epoch, deadline=180):
  """Waits until `job` has finished `epoch` of its group (of 20): epochs are left."""
  start = time.monotonic()
  while f'] epoch {epoch}/' not in (job.stdout() or ''):
    assert time.monotonic() - start < deadline, job.stderr()
    time.sleep(0.05)


def _submit(argv, workdir, logs):
  fv = flags.FlagValues()
  cli.define_flags(fv)
  cluster.define_flags(fv)
  argv = [*argv, f'--workdir={workdir}', '--num_shards=2']
  fv(['cluster', *argv, '--cluster=local', f'--logs={logs}'])
  return cluster.submit(argv, fv)[1]


@requires('submitit')
def test_an_array_survives_a_requeue_and_a_kill_and_merges_to_one_process(idx_dir, tmp_path,
                                                                          monkeypatch):
  monkeypatch.setenv('PYTHONPATH', ROOT)  # the tasks unpickle lenet_jax.cluster.ShardTask
  argv = _sweep(idx_dir)
  one = _run_py(*argv, f'--workdir={tmp_path / "one"}')
  assert one.returncode == 0, one.stderr

  workdir, logs = tmp_path / 'array', tmp_path / 'logs'
  warned, killed = _submit(argv, workdir, logs)
  _when_at_epoch(warned, 2)  # saved after every epoch: epoch 2 is on disk
  os.kill(_task_pid(warned), signal.SIGUSR2)  # the scheduler's warning before a time limit
  _when_at_epoch(killed, 2)
  os.kill(_task_pid(killed), signal.SIGKILL)  # a node lost
  assert warned.result() == 0  # requeued by submitit, resumed, finished
  with pytest.raises(Exception):
    killed.result()  # no requeue after SIGKILL
  log = warned.stdout()
  assert 'SIGUSR2: the epoch in progress was saved; asking submitit to requeue' in log
  assert 'Requeued job' in log
  # The requeued task resumed from its checkpoint: its epochs did not start over.
  after = log.split('Requeued job', 1)[1]
  first_epoch = int(after.split('] epoch ', 1)[1].split('/', 1)[0])
  assert first_epoch > 1, after

  again = _submit(argv, workdir, logs)  # the same command again: finishes the killed shard
  assert [job.result() for job in again] == [0, 0]
  merged = _run_py(*argv, f'--workdir={workdir}', '--num_shards=2', '--merge')
  assert merged.returncode == 0, merged.stdout + merged.stderr
  assert '4 of 4 runs finished' in merged.stdout
  assert _rows(workdir) == _rows(tmp_path / 'one')  # bitwise, every run


@requires('submitit')
def test_the_command_runs_an_array_here_and_merges(idx_dir, tmp_path):
  workdir = tmp_path / 'w'
  proc = subprocess.run(
      [sys.executable, '-m', 'lenet_jax.cluster', *_sweep(idx_dir, epochs=2),
       f'--workdir={workdir}', '--num_shards=2', '--cluster=local'],
      capture_output=True, text=True, cwd=ROOT, timeout=600,
      env={**os.environ, 'PYTHONPATH': ROOT})
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert 'submitted 2 task(s) to local' in proc.stdout
  assert '4 of 4 runs finished; results: ' in proc.stdout
  assert len(_rows(workdir)) == 4 and (workdir / 'cluster-logs').is_dir()
  assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('args, message', [
    (['--num_shards=2'], 'the tasks share a --workdir'),
    (['--num_shards=2', '--workdir=W', '--shard_index=1'], '--shard_index is chosen per task'),
    (['--num_shards=0', '--workdir=W'], '--num_shards=0 must be >= 1'),
    (['--num_shards=2', '--workdir=W', '--merge'], '--merge and --describe run here'),
    (['--num_shards=2', '--workdir=W', '--max_models=2', '--partition', 'gpu'],
     'write --partition=VALUE'),
    (['--num_shards=2', '--workdir=W', '--timeout_min=0'], '--timeout_min and'),
    (['--num_shards=2', '--workdir=W', 'extra'], "unexpected arguments ['extra']"),
    (['--num_shards=2', '--workdir=W'], '--max_models=auto is decided by each task'),
    (['--num_shards=2', '--workdir=W', '--max_models=2', '--epochs=0'], 'epochs=0'),
    (['--num_shards=2', '--workdir=W', '--max_models=2', '--nowait'], '--cluster=local --nowait'),
    (['--num_shards=2', '--workdir=W', '--max_models=2', '--distributed'],
     '--distributed joins processes'),
])
def test_the_launcher_answers_bad_input_with_one_line(args, message, tmp_path):
  args = [a.replace('=W', f'={tmp_path / "w"}') for a in args]
  proc = subprocess.run([sys.executable, '-m', 'lenet_jax.cluster', *args, '--cluster=local'],
                        capture_output=True, text=True, cwd=ROOT, timeout=120,
                        env={**os.environ, 'PYTHONPATH': ROOT})
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert proc.stderr.startswith('error: ') and message in proc.stderr, proc.stderr
  assert proc.stderr.count('\n') == 1 and not (tmp_path / 'w').exists()
