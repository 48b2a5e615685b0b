"""Training throughput of the note's network, beside PyTorch peers in the same run.

Two suites, both for the default network with ReLU, Adam 1e-3 and batch 256 on
Fashion-MNIST. Throughput counts training images only, summed over models,
steady state: the best of --repeats timed calls of --steps steps each, after
a warm-up call, compilation excluded (and given apart). Every measurement
runs in a fresh process, so none inherits another's caches or threads.

--suite=cpu (the default), for the CPU:

  .venv/bin/python -m lenet_jax.bench --torch_python=/tmp/torch-ref/bin/python

  images/s of one model and of --models vmapped models per convolution
  implementation, and the wall time from process start until the test
  accuracy first reaches --target, with an empty and a warm compilation
  cache. With --torch_python (see ../shared/bench/torch_lenet.py) the PyTorch
  reference is measured before and after ours and figures are given as ratios
  to its median.

--suite=gpu, for a GPU (or TPU; see docs/benchmark.md and benchmarks/gpu.sh):

  python3 -m lenet_jax.bench --suite=gpu --idx_dir=DIR --json_out=bench.json

  images/s and compile seconds for --models models (1, 8, 64, 256, 1024) x
  --forms ('xla': lax.conv, vmapped into a grouped convolution; 'patches':
  im2col and one matrix multiply, batched under vmap) x --precisions
  (ModelConfig.precision; 'tf32' only where the device has TF32), each with
  a --timeout after which it is recorded as 'timeout' and the table goes on;
  XLA's cost analysis of one compiled training step (bytes accessed and
  flops per image per model) and the achieved bytes/s against
  --memory_bandwidth_gbs; the PyTorch GPU peers
  (../shared/bench/torch_lenet_gpu.py) at matched precision (our float32
  against its fp32, our tf32 against its tf32; ratios only between those);
  optionally a profile of the best form at 64 models (--profile_dir); and the
  end-to-end wall time of `run.py --seeds=--e2e_seeds --epochs=--e2e_epochs`
  with a cold and a warm persistent compilation cache and with a --workdir.
  --budget_s bounds the whole suite: what no longer fits is recorded as
  skipped.
"""
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_SCRIPT = os.path.join(ROOT, '..', 'shared', 'bench', 'torch_lenet.py')
TORCH_GPU_SCRIPT = os.path.join(ROOT, '..', 'shared', 'bench', 'torch_lenet_gpu.py')
GPU_MODELS = ['1', '8', '64', '256', '1024']
# Our precision -> the peer's --precision at the same arithmetic.
TORCH_PRECISION = {'float32': 'fp32', 'tf32': 'tf32'}
PROFILE_RESERVE_S = 40  # GPU suite: kept for the profile at the end of --budget_s
CHILD_ENV = {'XLA_PYTHON_CLIENT_PREALLOCATE': 'false'}  # each child takes only what it uses


def define_flags() -> None:
  """The command line's flags, defined when this module runs as the program.

  Not at import: the children import this module (and tests do, beside
  cli.py's flags, which also name --idx_dir).
  """
  flags.DEFINE_enum('suite', 'cpu', ['cpu', 'gpu'], 'cpu: the CPU table (convolution '
                    'implementations, time to accuracy); gpu: the many-model table for a '
                    'GPU/TPU (forms x models x precisions, peers, cost analysis, end to end).')
  flags.DEFINE_string('torch_python', None, 'Python with torch installed, for the PyTorch '
                      'reference. CPU suite: none unless given. GPU suite: default this '
                      'Python, if it imports torch with CUDA; else the peers are skipped.')
  flags.DEFINE_string('torch_script', TORCH_SCRIPT, 'The PyTorch CPU reference script.')
  flags.DEFINE_string('torch_gpu_script', TORCH_GPU_SCRIPT, 'The PyTorch GPU peers script.')
  flags.DEFINE_integer('steps', 100, 'Training steps per timed call.')
  flags.DEFINE_integer('repeats', 3, 'Timed calls per measurement; the best is kept.')
  flags.DEFINE_list('models', None, 'Model counts. CPU suite: the vmapped measurement '
                    '(default 8). GPU suite: the table\'s rows, measured in this order '
                    f'(default {",".join(GPU_MODELS)}).')
  flags.DEFINE_list('conv_impls', ['native', 'patches', 'xla'], 'CPU suite: convolution '
                    'implementations to time.')
  flags.DEFINE_list('vmapped_impls', ['native', 'patches'], 'CPU suite: implementations also '
                    'timed with --models vmapped models (XLA\'s CPU convolution takes minutes '
                    'there).')
  flags.DEFINE_float('target', 0.85, 'CPU suite: test accuracy for the time-to-accuracy '
                     'measurement.')
  flags.DEFINE_boolean('time_to_target', True, 'CPU suite: measure the time to --target.')
  flags.DEFINE_string('json_out', None, 'Also write the figures to this JSON file (the GPU '
                      'suite rewrites it after every measurement).')
  flags.DEFINE_list('forms', ['xla', 'patches'], 'GPU suite: convolution forms (conv_impl): '
                    'xla (lax.conv; vmapped, a grouped convolution) and patches (im2col + '
                    'batched matmul).')
  flags.DEFINE_list('precisions', ['float32', 'tf32', 'bfloat16'], 'GPU suite: '
                    'ModelConfig.precision values, measured in this order; tf32 is skipped '
                    'where the device has no TF32.')
  flags.DEFINE_float('timeout', 120, 'GPU suite: seconds one measurement may take (start, '
                     'data, compilation, timing) before it is recorded as a timeout.')
  flags.DEFINE_boolean('skip_after_timeout', True, 'GPU suite: once a form times out at M '
                       'models, skip it at M and more models at the later precisions too.')
  flags.DEFINE_integer('max_call_images', 0, 'GPU suite: if > 0, fewer steps per timed call '
                       'where models x steps x 256 would exceed this many images (so 1024 '
                       'models fit a timeout); each row records its steps.')
  flags.DEFINE_boolean('cost', True, 'GPU suite: compile one training step apart and record '
                       "XLA's cost analysis (bytes accessed, flops) per image per model.")
  flags.DEFINE_list('cost_models', None, 'GPU suite: with --cost, only at these model counts '
                    '(default: every row); each compiles the step once more.')
  flags.DEFINE_boolean('throughput', True, 'GPU suite: measure the table (and the peers, the '
                       'profile); --nothroughput runs only the end-to-end part.')
  flags.DEFINE_float('memory_bandwidth_gbs', 4800, 'GPU suite: the device memory bandwidth '
                     'in GB/s that achieved bytes/s are compared with. The default is the '
                     "NVIDIA H200's spec figure (4.8 TB/s), not a measurement.")
  flags.DEFINE_list('torch_models', None, 'GPU suite: model counts of the peers\' vmap mode '
                    '(default: --models above 1, at most 256).')
  flags.DEFINE_float('torch_timeout', 300, 'GPU suite: seconds one peer run (one precision: '
                     'eager, graphs, vmap, loop) may take.')
  flags.DEFINE_string('profile_dir', None, 'GPU suite: write a jax.profiler trace of a few '
                      'steps of the fastest form at 64 models here.')
  flags.DEFINE_string('idx_dir', None, 'Directory of the Fashion-MNIST IDX files (else '
                      '$LENET_JAX_IDX_DIR, else the data.py defaults); passed to every child, '
                      'run.py and the peers.')
  flags.DEFINE_float('budget_s', None, 'GPU suite: seconds the whole suite may take; a '
                     'measurement that no longer fits is skipped and recorded so.')
  flags.DEFINE_boolean('e2e', True, 'GPU suite: time run.py end to end after the table.')
  flags.DEFINE_integer('e2e_epochs', 15, 'GPU suite: --epochs of the end-to-end runs.')
  flags.DEFINE_integer('e2e_seeds', 64, 'GPU suite: --seeds of the end-to-end runs.')
  flags.DEFINE_float('e2e_timeout', 600, 'GPU suite: seconds one end-to-end run may take.')
  flags.DEFINE_list('e2e_args', [], 'GPU suite: more run.py flags for the end-to-end runs, '
                    'e.g. --e2e_args=--precision=bfloat16.')


FLAGS = flags.FLAGS

# The network and recipe of the reference: ReLU, Adam 1e-3 constant, batch 256.
RECIPE_FLAGS = ['--activation=relu', '--optimizer=adam', '--learning_rate=1e-3',
                '--schedule=constant', '--batch_size=256', '--init=torch']


def throughput(conv_impl: str, models: int, steps: int, repeats: int,
               precision: str = 'default', cost: bool = False,
               profile_dir: str | None = None, report=None) -> dict:
  """Steady training images/s (summed over models) and compile seconds.

  `cost`: also XLA's cost analysis of one compiled training step, per image
  per model. `profile_dir`: the timed calls run under jax.profiler.trace.
  `report(result)` is called with the result so far, once it has the
  throughput and again with the cost, so a caller that stops the process
  keeps what was measured.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from lenet_jax import config, data, optim, train  # pylint: disable=import-outside-toplevel
  from lenet_jax.model import LeNet5  # pylint: disable=import-outside-toplevel
  cfg = config.override(config.default(), {
      'model.conv_impl': conv_impl, 'optim.schedule': 'constant', 'model.init': 'torch',
      'optim.learning_rate': 1e-3, 'batch_size': 256, 'model.precision': precision})
  ds = data.load(cfg.data)
  n = steps * cfg.batch_size
  if n > len(ds.train_images):
    raise ValueError(f'--steps={steps} needs {n} training images; {ds.source} has '
                     f'{len(ds.train_images)}.')
  images, labels = jnp.asarray(ds.train_images[:n]), jnp.asarray(ds.train_labels[:n])
  model = LeNet5(cfg.model)
  tx = optim.make_optimizer(cfg.optim, steps, 1)
  init = lambda key: train.create_train_state(model, tx, key, cfg.model.input_shape)
  if models > 1:
    # One vmapped program rather than `models` initialisations op by op (minutes at 1024).
    keys = jax.vmap(jax.random.key)(jnp.arange(models))
    state, fn = jax.jit(jax.vmap(init))(keys), train.train_epoch_many
  else:
    state, fn, keys = init(jax.random.key(0)), train.train_epoch, jax.random.key(0)
  start = time.perf_counter()
  compiled = fn.lower(state, images, labels, keys, cfg.batch_size).compile()
  compile_s = time.perf_counter() - start
  state, metrics = compiled(state, images, labels, keys)  # warm-up
  jax.block_until_ready(metrics)
  times = []
  if profile_dir:
    os.makedirs(profile_dir, exist_ok=True)
  with jax.profiler.trace(profile_dir) if profile_dir else contextlib.nullcontext():
    for _ in range(repeats):
      start = time.perf_counter()
      state, metrics = compiled(state, images, labels, keys)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - start)
  result = {'conv_impl': conv_impl, 'models': models, 'precision': precision,
            'steps': steps, 'img_per_s': models * n / min(times), 'compile_s': compile_s}
  if report:
    report(result)
  if cost:
    # One step on its own: XLA's cost analysis counts a loop's body once.
    b = cfg.batch_size
    start = time.perf_counter()
    one = fn.lower(state, images[:b], labels[:b], keys, b).compile()
    analysis = one.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    per = b * models
    result['cost_compile_s'] = time.perf_counter() - start
    for key, name in (('bytes accessed', 'bytes_per_image'), ('flops', 'flops_per_image')):
      if analysis and analysis.get(key) is not None:
        result[name] = float(analysis[key]) / per
    if report:
      report(result)
  return result


def environment() -> dict:
  """The device and versions (run in a child, so this process never holds the GPU)."""
  import flax  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jaxlib  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from lenet_jax import model  # pylint: disable=import-outside-toplevel
  device = jax.devices()[0]
  return {'backend': jax.default_backend(), 'device_kind': device.device_kind,
          'device_count': jax.device_count(),
          'compute_capability': getattr(device, 'compute_capability', None),
          'tf32': model._has_tf32(),  # pylint: disable=protected-access
          'jax': jax.__version__, 'jaxlib': jaxlib.__version__, 'flax': flax.__version__,
          'optax': optax.__version__, 'python': sys.version.split()[0]}


# ----------------------------------------------------------------------------
# Children: every measurement in a fresh process, with a timeout


def _child_env() -> dict:
  # main() puts --idx_dir in $LENET_JAX_IDX_DIR, which every child inherits.
  return {**os.environ, **CHILD_ENV, 'PYTHONPATH': ROOT}


def run_child(cmd: list[str], timeout: float | None, env: dict | None = None) -> dict:
  """Runs `cmd` in its own process group; kills the group at `timeout` seconds.

  Returns rc (None on a timeout), timed_out, wall_s and the whole stdout and
  stderr, including what a killed child printed before it was stopped.
  """
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT, env=env or _child_env(), start_new_session=True)
  try:
    out, err = proc.communicate(timeout=timeout)
    timed_out = False
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)  # the child and anything it started
    out, err = proc.communicate()
    timed_out = True
  return {'rc': None if timed_out else proc.returncode, 'timed_out': timed_out,
          'wall_s': time.perf_counter() - start, 'stdout': out or '', 'stderr': err or ''}


def _call_in_child(expr: str, timeout: float | None) -> tuple[dict | None, dict]:
  """Evaluates `expr` (with `bench` and `report` in scope) in a child; its last RESULT."""
  code = ('import json, sys\nfrom lenet_jax import bench\n'
          'def report(r):\n  print("RESULT", json.dumps(r), flush=True)\n'
          f'report({expr})\n')
  proc = run_child([sys.executable, '-c', code], timeout)
  results = [json.loads(line[len('RESULT '):]) for line in proc['stdout'].splitlines()
             if line.startswith('RESULT ')]
  return (results[-1] if results else None), proc


def _measure_in_subprocess(conv_impl: str, models: int) -> dict:
  """CPU suite: one measurement in a fresh process, no timeout."""
  result, proc = _call_in_child(
      f'bench.throughput({conv_impl!r}, {models}, {FLAGS.steps}, {FLAGS.repeats})', None)
  if result is None:
    raise RuntimeError(f'throughput({conv_impl}, {models}) failed:\n{proc["stderr"][-3000:]}')
  return result


# ----------------------------------------------------------------------------
# The CPU suite


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


def cpu_suite():
  vmapped = [int(m) for m in FLAGS.models] if FLAGS.models else [8]
  results = {'machine': f'{os.cpu_count()} CPUs', 'steps': FLAGS.steps}
  torch_runs = []
  if FLAGS.torch_python:
    torch_runs.append(torch_reference(FLAGS.torch_python))
  for impl in FLAGS.conv_impls:
    results[f'{impl}_1'] = _measure_in_subprocess(impl, 1)
    if impl in FLAGS.vmapped_impls:
      for models in vmapped:
        results[f'{impl}_{models}'] = _measure_in_subprocess(impl, models)
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
    for models in (1, *vmapped):
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


def main(argv):
  del argv
  if FLAGS.idx_dir:  # for this process's children: run.py, the measurements, the peers
    os.environ['LENET_JAX_IDX_DIR'] = os.path.abspath(FLAGS.idx_dir)
  if FLAGS.suite == 'gpu':
    from lenet_jax import bench_gpu  # pylint: disable=import-outside-toplevel
    bench_gpu.gpu_suite()
  else:
    cpu_suite()


if __name__ == '__main__':
  define_flags()
  app.run(main)
