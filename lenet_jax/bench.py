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
import datetime
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


# ----------------------------------------------------------------------------
# The GPU suite


class _Clock:
  """The suite's budget: how long the next child may run, or None when none fits."""
  MIN_S = 10  # not worth starting a child with less

  def __init__(self, budget_s: float | None):
    self.deadline = None if budget_s is None else time.monotonic() + budget_s

  def allow(self, timeout: float, reserve: float = 0) -> float | None:
    """`timeout`, or less to end `reserve` seconds before the deadline; None: too little."""
    if self.deadline is None:
      return timeout
    left = self.deadline - time.monotonic() - reserve
    return min(timeout, left) if left >= self.MIN_S else None


def _idx_dir() -> str:
  """Where the data is (for the peers, which have no TFDS): --idx_dir, else data.py's."""
  from lenet_jax import data  # pylint: disable=import-outside-toplevel
  return os.environ.get(data.IDX_DIR_ENV) or data.SYSTEM_IDX_DIRS['fashion_mnist']


def _torch_python(env_info: dict) -> tuple[str | None, str]:
  """The Python for the GPU peers, or None and why they are skipped."""
  python = FLAGS.torch_python or sys.executable
  if not os.path.exists(FLAGS.torch_gpu_script):
    return None, (f'the peers script {FLAGS.torch_gpu_script} is not here (on the device '
                  'machine, carry a copy: docs/benchmark.md)')
  probe = run_child([python, '-c', 'import json, torch; print(json.dumps('
                     '[torch.__version__, torch.cuda.is_available()]))'], 120)
  if probe['rc'] != 0:
    return None, f'{python} cannot import torch'
  version, cuda = json.loads(probe['stdout'].strip().splitlines()[-1])
  if not cuda:
    return None, f'torch {version} in {python} sees no CUDA GPU'
  if env_info.get('backend') != 'gpu':
    return None, f'JAX runs on {env_info.get("backend")}, not the GPU the peers use'
  return python, f'torch {version}'


def torch_gpu_peers(python: str, script: str, precision: str, models: list[int], steps: int,
                    idx_dir: str, timeout: float) -> dict:
  """One run of the peers script at `precision` (fp32 or tf32): its JSON lines."""
  cmd = [python, script, f'--idx_dir={idx_dir}', f'--steps={steps}',
         f'--models={",".join(map(str, models))}', f'--precision={precision}']
  proc = run_child(cmd, timeout)
  lines = []
  for line in proc['stdout'].splitlines():
    try:
      lines.append(json.loads(line))
    except ValueError:
      pass
  out = {'precision': precision, 'rc': proc['rc'], 'timed_out': proc['timed_out'],
         'wall_s': proc['wall_s'], 'header': lines[0] if lines else None,
         'rows': [l for l in lines[1:] if 'mode' in l]}
  if proc['rc'] != 0:
    out['stderr_tail'] = proc['stderr'][-1500:]
  return out


def torch_best(peers: list[dict], precision: str, models: int) -> dict | None:
  """The fastest peer row at `models` models and the matched precision, if any.

  Our 'float32' meets the peers' fp32 and 'tf32' their tf32; other precisions
  ('default', 'bfloat16') have no peer at the same arithmetic, so no ratio.
  """
  rows = [r for run in peers if run['precision'] == TORCH_PRECISION.get(precision)
          for r in run['rows'] if r.get('models') == models and 'img_per_s' in r]
  return max(rows, key=lambda r: r['img_per_s']) if rows else None


def e2e_runs(clock: _Clock) -> list[dict]:
  """run.py end to end: cold cache, warm cache, warm cache with a --workdir."""
  runs = []
  with tempfile.TemporaryDirectory(prefix='lenet_bench_') as tmp:
    cache = os.path.join(tmp, 'xla_cache')
    for name, extra in (('cold cache', []), ('warm cache', []),
                        ('warm cache, --workdir', [f'--workdir={os.path.join(tmp, "wd")}'])):
      cmd = [sys.executable, os.path.join(ROOT, 'run.py'), f'--seeds={FLAGS.e2e_seeds}',
             f'--epochs={FLAGS.e2e_epochs}', '--notensorboard', f'--cache_dir={cache}',
             *extra, *FLAGS.e2e_args]
      run = {'name': name, 'cmd': ' '.join(cmd[1:]).replace(tmp, '$TMP')}
      timeout = clock.allow(FLAGS.e2e_timeout)
      if timeout is None:
        runs.append({**run, 'status': 'skipped (budget)'})
        continue
      proc = run_child(cmd, timeout)
      run.update(rc=proc['rc'], timed_out=proc['timed_out'], wall_s=proc['wall_s'],
                 status='timeout' if proc['timed_out'] else
                 ('ok' if proc['rc'] == 0 else 'failed'))
      if proc['rc'] != 0:
        run['stderr_tail'] = proc['stderr'][-1500:]
      run['stdout_tail'] = proc['stdout'][-600:]
      runs.append(run)
  return runs


def _fmt(value, spec: str, width: int) -> str:
  return f'{value:{width}{spec}}' if isinstance(value, (int, float)) else f'{value or "":>{width}}'


def print_gpu_table(results: dict) -> None:
  env, bandwidth = results['environment'], FLAGS.memory_bandwidth_gbs
  print(f"\n{env.get('device_kind')} ({env.get('backend')}), jax {env.get('jax')}, "
        f"flax {env.get('flax')}, {results['date']}")
  if results['throughput']:
    print(f'steady training img/s summed over models, best of {FLAGS.repeats} calls:')
    print(f"{'precision':9s} {'form':7s} {'models':>6s} {'img/s':>12s} {'compile':>8s} "
          f"{'B/img':>10s} {'flop/img':>9s} {'GB/s':>7s} {'%bw':>5s} {'vs torch':>9s}  peer")
  for r in results['throughput']:
    head = f"{r['precision']:9s} {r['form']:7s} {r['models']:6d}"
    if r['status'] != 'ok':
      print(f"{head} {r['status']}")
      continue
    gbs = r.get('achieved_gbs')
    print(f"{head} {r['img_per_s']:12,.0f} {r['compile_s']:7.1f}s "
          f"{_fmt(r.get('bytes_per_image'), ',.0f', 10)} "
          f"{_fmt(r.get('flops_per_image'), '.3g', 9)} {_fmt(gbs, ',.0f', 7)} "
          f"{_fmt(None if gbs is None else 100 * gbs / bandwidth, '.1f', 5)} "
          f"{_fmt(r.get('vs_torch'), '.2f', 9)}  {r.get('torch_peer') or ''}")
  if results['throughput']:
    print('B/img, flop/img: XLA cost analysis of one compiled step, per image per model; '
          f'GB/s: B/img x img/s; %bw: of {bandwidth:,.0f} GB/s (spec, not measured); '
          'vs torch: the fastest peer at the same models and precision.')
    print(f"\nPyTorch GPU peers: {results['torch_note']}")
  for run in results['torch']:
    status = run.get('status') or ('timeout' if run['timed_out'] else f"rc {run['rc']}")
    print(f"  --precision={run['precision']} ({status}, {run['wall_s']:.0f}s)")
    for row in run['rows']:
      value = (f"{row['img_per_s']:12,.0f} img/s" if 'img_per_s' in row
               else f"error {row.get('error', '')[:80]}")
      print(f"    {row['mode']:7s} {row.get('models', 1):5d} models {value}")
  if results.get('profile'):
    print(f"\nprofile: {results['profile']}")
  if results['e2e']:
    print('\nend to end, wall seconds of the whole process (run.py --seeds='
          f'{FLAGS.e2e_seeds} --epochs={FLAGS.e2e_epochs} --notensorboard):')
    for run in results['e2e']:
      wall = f"{run['wall_s']:8.1f}s" if 'wall_s' in run else ''
      print(f"  {run['name']:24s} {run['status']:18s} {wall}  rc={run.get('rc')}")


def gpu_suite():
  results = {'suite': 'gpu', 'date': datetime.datetime.now().astimezone().isoformat(
      timespec='seconds'), 'flags': {k: FLAGS[k].value for k in (
          'steps', 'repeats', 'models', 'forms', 'precisions', 'timeout', 'max_call_images',
          'memory_bandwidth_gbs', 'budget_s', 'cost_models', 'e2e_epochs', 'e2e_seeds',
          'e2e_args')},
      'idx_dir': _idx_dir(), 'throughput': [], 'torch': [], 'torch_note': '', 'e2e': []}
  clock = _Clock(FLAGS.budget_s)

  def save():
    if FLAGS.json_out:
      with open(FLAGS.json_out + '.tmp', 'w') as f:
        json.dump(results, f, indent=2)
      os.replace(FLAGS.json_out + '.tmp', FLAGS.json_out)

  env, proc = _call_in_child('bench.environment()', 300)
  if env is None:
    raise RuntimeError(f'JAX does not start here:\n{proc["stderr"][-3000:]}')
  results['environment'] = env
  print(f"{env['device_kind']} ({env['backend']}), jax {env['jax']}, flax {env['flax']}",
        flush=True)
  models_list = [int(m) for m in (FLAGS.models or GPU_MODELS)] if FLAGS.throughput else []
  torch_models = ([int(m) for m in FLAGS.torch_models] if FLAGS.torch_models
                  else [m for m in models_list if 1 < m <= 256])
  python, note = _torch_python(env) if FLAGS.throughput else (None, '--nothroughput')
  results['torch_note'] = note if python else f'skipped: {note}'
  print(f"PyTorch GPU peers: {results['torch_note']}", flush=True)
  timed_out_at = {}  # form -> fewest models it timed out at
  # Time kept back for the profile, at the end of the table's budget.
  reserve = PROFILE_RESERVE_S if FLAGS.profile_dir else 0
  for precision in FLAGS.precisions if FLAGS.throughput else []:
    for models in models_list:
      for form in FLAGS.forms:
        row = {'precision': precision, 'form': form, 'models': models}
        steps = FLAGS.steps
        if FLAGS.max_call_images > 0:
          steps = max(1, min(steps, FLAGS.max_call_images // (models * 256)))
        cost = FLAGS.cost and (not FLAGS.cost_models or str(models) in FLAGS.cost_models)
        timeout = clock.allow(FLAGS.timeout, reserve)
        if precision == 'tf32' and not env['tf32']:
          row['status'] = 'skipped (no TF32 on this device)'
        elif FLAGS.skip_after_timeout and models >= timed_out_at.get(form, float('inf')):
          row['status'] = f'skipped (timed out at {timed_out_at[form]} models)'
        elif timeout is None:
          row['status'] = 'skipped (budget)'
        else:
          result, proc = _call_in_child(
              f'bench.throughput({form!r}, {models}, {steps}, {FLAGS.repeats}, '
              f'precision={precision!r}, cost={cost}, report=report)', timeout)
          row.update(result or {})
          row['wall_s'] = proc['wall_s']
          if result is None:
            row['status'] = 'timeout' if proc['timed_out'] else 'failed'
            if proc['timed_out']:
              timed_out_at[form] = min(models, timed_out_at.get(form, models))
            else:
              row['stderr_tail'] = proc['stderr'][-1500:]
          else:
            row['status'] = 'ok'
            if proc['timed_out']:  # while compiling the one step for the cost analysis
              row['cost_status'] = 'timeout'
            if 'bytes_per_image' in row:
              row['achieved_gbs'] = row['bytes_per_image'] * row['img_per_s'] / 1e9
              row['fraction_of_bandwidth'] = row['achieved_gbs'] / FLAGS.memory_bandwidth_gbs
        results['throughput'].append(row)
        print(f"{precision} {form} {models}: {row['status']}"
              + (f", {row['img_per_s']:,.0f} img/s" if 'img_per_s' in row else ''), flush=True)
        save()
    if python and precision in TORCH_PRECISION and (precision != 'tf32' or env['tf32']):
      timeout = clock.allow(FLAGS.torch_timeout, reserve)
      if timeout is None:
        results['torch'].append({'precision': TORCH_PRECISION[precision], 'rc': None,
                                 'timed_out': False, 'wall_s': 0, 'rows': [],
                                 'status': 'skipped (budget)'})
      else:
        results['torch'].append(torch_gpu_peers(
            python, FLAGS.torch_gpu_script, TORCH_PRECISION[precision], torch_models,
            FLAGS.steps, _idx_dir(), timeout))
        print(f'torch --precision={TORCH_PRECISION[precision]}: '
              f"{len(results['torch'][-1]['rows'])} rows", flush=True)
      save()
  for row in results['throughput']:  # ratios at matched precision only
    best = torch_best(results['torch'], row['precision'], row['models'])
    if best and row['status'] == 'ok':
      row['vs_torch'] = row['img_per_s'] / best['img_per_s']
      row['torch_peer'] = f"{best['mode']} {best['img_per_s']:,.0f}"
  if FLAGS.profile_dir and FLAGS.throughput:
    results['profile'] = _profile(results, clock)
  save()
  if FLAGS.e2e:
    results['e2e'] = e2e_runs(clock)
  save()
  print_gpu_table(results)


def _profile(results: dict, clock: _Clock) -> str:
  """A trace of a few steps of the fastest form at 64 models (or the nearest count)."""
  ok = [r for r in results['throughput'] if r['status'] == 'ok']
  if not ok:
    return 'skipped: no measurement succeeded'
  nearest = min({r['models'] for r in ok}, key=lambda m: abs(m - 64))
  best = max((r for r in ok if r['models'] == nearest), key=lambda r: r['img_per_s'])
  timeout = clock.allow(FLAGS.timeout)
  if timeout is None:
    return 'skipped (budget)'
  directory = os.path.abspath(FLAGS.profile_dir)
  result, proc = _call_in_child(
      f"bench.throughput({best['form']!r}, {nearest}, {min(FLAGS.steps, 10)}, 1, "
      f"precision={best['precision']!r}, profile_dir={directory!r})", timeout)
  what = f"{best['form']}, {nearest} models, {best['precision']}"
  if result is None:
    return f"failed ({what}): {'timeout' if proc['timed_out'] else proc['stderr'][-300:]}"
  return f'{directory} ({what}; TensorBoard profile plugin or xprof)'


def main(argv):
  del argv
  if FLAGS.idx_dir:  # for this process's children: run.py, the measurements, the peers
    os.environ['LENET_JAX_IDX_DIR'] = os.path.abspath(FLAGS.idx_dir)
  if FLAGS.suite == 'gpu':
    gpu_suite()
  else:
    cpu_suite()


if __name__ == '__main__':
  define_flags()
  app.run(main)
