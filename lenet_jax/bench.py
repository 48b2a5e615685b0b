"""Training throughput of the note's network, beside the PyTorch reference in the same run.

  .venv/bin/python -m lenet_jax.bench --torch_python=/tmp/torch-ref/bin/python

For the default network with ReLU, Adam 1e-3 and batch 256 on Fashion-MNIST:
training images/s of one model and models x images/s of 8 vmapped models, per
convolution implementation, with compile seconds; and the wall time from
process start (imports, data, compilation, training, evaluation) until the
test accuracy first reaches 0.85, with an empty and with a warm compilation
cache. With --torch_python (a Python that has torch, see
../shared/bench/torch_lenet.py), the PyTorch reference is measured before and
after ours, and the figures are given as ratios to its median. Throughput
counts training images only, steady state (compilation excluded), best of
--repeats timed calls of --steps steps each.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_SCRIPT = os.path.join(ROOT, '..', 'shared', 'bench', 'torch_lenet.py')

flags.DEFINE_string('torch_python', None, 'Python with torch installed, for the reference.')
flags.DEFINE_string('torch_script', TORCH_SCRIPT, 'The PyTorch reference script.')
flags.DEFINE_integer('steps', 100, 'Training steps per timed call.')
flags.DEFINE_integer('repeats', 3, 'Timed calls per measurement; the best is kept.')
flags.DEFINE_integer('models', 8, 'Models trained together in the vmapped measurement.')
flags.DEFINE_list('conv_impls', ['native', 'patches', 'xla'], 'Convolution implementations to time.')
flags.DEFINE_list('vmapped_impls', ['native', 'patches'], 'Implementations also timed with --models '
                  'vmapped models (XLA\'s CPU convolution takes minutes there).')
flags.DEFINE_float('target', 0.85, 'Test accuracy for the time-to-accuracy measurement.')
flags.DEFINE_boolean('time_to_target', True, 'Measure the time to --target.')
flags.DEFINE_string('json_out', None, 'Also write the figures to this JSON file.')
FLAGS = flags.FLAGS

# The network and recipe of the reference: ReLU, Adam 1e-3 constant, batch 256.
RECIPE_FLAGS = ['--activation=relu', '--optimizer=adam', '--learning_rate=1e-3',
                '--schedule=constant', '--batch_size=256', '--init=torch']


def throughput(conv_impl: str, models: int, steps: int, repeats: int) -> dict:
  """Steady training images/s (summed over models) and compile seconds."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from lenet_jax import config, data, optim, train  # pylint: disable=import-outside-toplevel
  from lenet_jax.model import LeNet5  # pylint: disable=import-outside-toplevel
  cfg = config.override(config.default(), {
      'model.conv_impl': conv_impl, 'optim.schedule': 'constant', 'model.init': 'torch',
      'optim.learning_rate': 1e-3, 'batch_size': 256})
  ds = data.load(cfg.data)
  n = steps * cfg.batch_size
  images, labels = jnp.asarray(ds.train_images[:n]), jnp.asarray(ds.train_labels[:n])
  model = LeNet5(cfg.model)
  tx = optim.make_optimizer(cfg.optim, steps, 1)
  states = [train.create_train_state(model, tx, jax.random.key(s), cfg.model.input_shape)
            for s in range(models)]
  if models > 1:
    state, fn = train.stack(states), train.train_epoch_many
    keys = jnp.stack([jax.random.key(s) for s in range(models)])
  else:
    state, fn, keys = states[0], train.train_epoch, jax.random.key(0)
  start = time.perf_counter()
  compiled = fn.lower(state, images, labels, keys, cfg.batch_size).compile()
  compile_s = time.perf_counter() - start
  state, metrics = compiled(state, images, labels, keys)  # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, metrics = compiled(state, images, labels, keys)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return {'conv_impl': conv_impl, 'models': models,
          'img_per_s': models * n / min(times), 'compile_s': compile_s}


def _measure_in_subprocess(conv_impl: str, models: int) -> dict:
  """Each measurement in a fresh process, so none inherits another's caches or threads."""
  code = ('import json, sys; from lenet_jax import bench; print("RESULT", json.dumps('
          f'bench.throughput({conv_impl!r}, {models}, {FLAGS.steps}, {FLAGS.repeats})))')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT}, check=False)
  for line in proc.stdout.splitlines():
    if line.startswith('RESULT '):
      return json.loads(line[len('RESULT '):])
  raise RuntimeError(f'throughput({conv_impl}, {models}) failed:\n{proc.stderr[-3000:]}')


def time_to_target(cache_dir: str) -> dict:
  """Wall seconds from spawning `run.py` until it exits at the target accuracy."""
  cmd = [sys.executable, os.path.join(ROOT, 'run.py'), *RECIPE_FLAGS, '--epochs=15',
         f'--target_test_acc={FLAGS.target}', f'--cache_dir={cache_dir}']
  start = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
  wall = time.perf_counter() - start
  if proc.returncode != 0:
    raise RuntimeError(f'{" ".join(cmd)} failed:\n{proc.stderr[-3000:]}')
  epochs = sum(1 for line in proc.stdout.splitlines() if '] epoch ' in line)
  return {'seconds': wall, 'epochs': epochs}


def torch_reference(python: str) -> dict:
  """The reference's steady img/s (3 epochs) and its wall time to the target."""
  def run(*args):
    start = time.perf_counter()
    proc = subprocess.run([python, FLAGS.torch_script, *args], capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
      raise RuntimeError(f'torch reference failed:\n{proc.stderr[-3000:]}')
    lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith('{')]
    return wall, lines
  _, lines = run('--epochs', '3')
  summary = lines[-1]
  out = {'img_per_s': summary['steady_img_per_s'], 'torch': summary['torch'],
         'threads': summary['threads']}
  if FLAGS.time_to_target:
    wall, lines = run('--epochs', '15', '--target_acc', str(FLAGS.target))
    out['target_seconds'] = wall
    out['target_epochs'] = sum(1 for l in lines if 'epoch' in l)
  return out


def main(argv):
  del argv
  results = {'machine': f'{os.cpu_count()} CPUs', 'steps': FLAGS.steps}
  torch_runs = []
  if FLAGS.torch_python:
    torch_runs.append(torch_reference(FLAGS.torch_python))
  for impl in FLAGS.conv_impls:
    results[f'{impl}_1'] = _measure_in_subprocess(impl, 1)
    if impl in FLAGS.vmapped_impls:
      results[f'{impl}_{FLAGS.models}'] = _measure_in_subprocess(impl, FLAGS.models)
  if FLAGS.time_to_target:
    with tempfile.TemporaryDirectory() as cache:
      results['target_cold'] = time_to_target(cache)
      results['target_warm'] = time_to_target(cache)
  if FLAGS.torch_python:
    torch_runs.append(torch_reference(FLAGS.torch_python))
    results['torch'] = torch_runs
  torch_rate = (statistics.median(r['img_per_s'] for r in torch_runs)
                if torch_runs else None)
  torch_target = (statistics.median(r['target_seconds'] for r in torch_runs)
                  if torch_runs and FLAGS.time_to_target else None)

  print(f"\n{'measurement':38s} {'value':>12s} {'vs torch':>9s}  compile")
  if torch_rate:
    print(f"{'torch ' + torch_runs[0]['torch'] + ' img/s (median of 2)':38s} "
          f'{torch_rate:12,.0f} {1.0:9.2f}')
  for impl in FLAGS.conv_impls:
    for models in (1, FLAGS.models):
      if f'{impl}_{models}' not in results:
        continue
      r = results[f'{impl}_{models}']
      label = f'jax {impl}, {models} model{"s" * (models > 1)}, img/s'
      ratio = f"{r['img_per_s'] / torch_rate:9.2f}" if torch_rate else ' ' * 9
      print(f"{label:38s} {r['img_per_s']:12,.0f} {ratio}  {r['compile_s']:.1f}s")
  if FLAGS.time_to_target:
    if torch_target:
      print(f"{'torch seconds to test acc ' + str(FLAGS.target):38s} {torch_target:12.1f}")
    for key in ('target_cold', 'target_warm'):
      r = results[key]
      label = f"jax seconds to test acc {FLAGS.target} ({key.split('_')[1]} cache)"
      ratio = f'{r["seconds"] / torch_target:9.2f}' if torch_target else ''
      print(f"{label:38s} {r['seconds']:12.1f} {ratio}  ({r['epochs']} epochs)")
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  app.run(main)
