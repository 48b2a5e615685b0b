"""The GPU suite of the benchmark (`python -m lenet_jax.bench --suite=gpu`).

Kept apart from bench.py, which owns the flags, the shared measurement
(`throughput`, in a fresh process each) and the CPU suite; see bench.py's
docstring for what this suite measures and docs/benchmark.md for how to run
it on the device machine.
"""
import datetime
import json
import os
import sys
import tempfile
import time

from lenet_jax.bench import (FLAGS, GPU_MODELS, PROFILE_RESERVE_S, ROOT, TORCH_PRECISION,
                             _call_in_child, run_child)



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
