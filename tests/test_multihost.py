"""One sweep over two processes joined by jax.distributed (as two hosts would be),
against one process: the same runs, bitwise, one merged results table, and a
process stopped part way finishes its share when the command runs again."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from lenet_jax import multihost

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPARED = ('status', 'epochs_run', 'train_loss', 'val_acc', 'test_acc', 'test_loss',
            'best_epoch', 'data_fingerprint')


def _sweep(idx_dir, workdir):
  return [os.path.join(ROOT, 'run.py'), '--dataset=mnist', f'--idx_dir={idx_dir}',
          '--validation_size=200', '--channels=4,8', '--channels=6,8',
          '--learning_rate=1e-3,3e-3', '--dense=16', '--epochs=20', '--batch_size=100',
          '--notensorboard', '--cache_dir=', '--max_models=2', '--checkpoint_every_secs=0',
          f'--workdir={workdir}']


def _rows(workdir):
  with open(os.path.join(workdir, 'results.jsonl')) as f:
    return {r['run_id']: {k: r.get(k) for k in COMPARED} for r in map(json.loads, f)}


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(idx_dir, workdir, logs):
  """The two processes, their output in logs/0.txt and logs/1.txt."""
  port, env = _free_port(), {**os.environ, 'PYTHONPATH': ROOT}
  logs.mkdir(exist_ok=True)
  procs = []
  for i in range(2):
    with open(logs / f'{i}.txt', 'w') as out:
      procs.append(subprocess.Popen(
          [sys.executable, *_sweep(idx_dir, workdir), '--distributed'], stdout=out,
          stderr=subprocess.STDOUT, text=True, cwd=ROOT,
          env={**env, multihost.COORDINATOR_ENV: f'127.0.0.1:{port}',
               multihost.NUM_PROCESSES_ENV: '2', multihost.PROCESS_ID_ENV: str(i)}))
  return procs


def _finish(procs, logs):
  try:
    for p in procs:
      p.wait(timeout=600)
  finally:
    for p in procs:  # never left running after a failure
      if p.poll() is None:
        p.kill()
  return [p.returncode for p in procs], [(logs / f'{i}.txt').read_text() for i in range(2)]


def test_two_processes_train_the_sweep_of_one_and_resume(idx_dir, tmp_path):
  one = subprocess.run([sys.executable, *_sweep(idx_dir, tmp_path / 'one')],
                       capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env={**os.environ, 'PYTHONPATH': ROOT})
  assert one.returncode == 0, one.stderr
  workdir, logs = tmp_path / 'two', tmp_path / 'logs'

  # Process 1 stopped (SIGTERM) part way: it saves its epoch and ends; process 0
  # finishes, waits for it, and its merge lists what is missing.
  procs = _start(idx_dir, workdir, logs)
  start = time.monotonic()
  try:
    while '] epoch 2/' not in (logs / '1.txt').read_text():
      assert time.monotonic() - start < 300 and procs[1].poll() is None, (
          (logs / '1.txt').read_text())
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
  finally:
    codes, outputs = _finish(procs, logs)
  assert codes == [1, 130], outputs
  assert 'process 0 of 2: shard 0' in outputs[0] and 'process 1 of 2: shard 1' in outputs[1]
  assert '2 of 4 runs finished' in outputs[0] and 'whole sweep' not in outputs[1]

  # The same command again: process 1 trains its group again (groups are not
  # checkpointed across processes) and process 0 nothing; then all is merged.
  codes, outputs = _finish(_start(idx_dir, workdir, logs), logs)
  assert codes == [0, 0], outputs
  assert '2 of 2 runs already finished' in outputs[0]
  assert 'every process has finished; the whole sweep:' in outputs[0]
  assert '4 of 4 runs finished' in outputs[0]
  assert _rows(workdir) == _rows(tmp_path / 'one')  # bitwise, every run
  assert sorted(f for f in os.listdir(workdir) if f.startswith('results')) == [
      'results.csv', 'results.jsonl', 'results.shard-0-of-2.csv',
      'results.shard-0-of-2.jsonl', 'results.shard-1-of-2.csv', 'results.shard-1-of-2.jsonl']


@pytest.mark.parametrize('extra, message', [
    (['--num_shards=2', '--workdir=W'], 'neither --num_shards'),
    ([], 'give --workdir'),
    (['--workdir=W'], '--distributed needs an integer --max_models'),
])
def test_distributed_needs_a_workdir_and_no_shard_flags(extra, message, tmp_path):
  args = [a.replace('=W', f'={tmp_path}') for a in extra]
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'run.py'), '--distributed', *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=120,
                        env={**os.environ, 'PYTHONPATH': ROOT})
  assert proc.returncode == 2 and proc.stderr.startswith('error: --distributed'), proc.stderr
  assert message in proc.stderr
