"""lenet_jax.bench's GPU-suite machinery, on the CPU: children with timeouts, peers, ratios."""
import json
import sys

from absl import flags

from lenet_jax import bench, bench_gpu

# What ../shared/bench/torch_lenet_gpu.py prints: a header, then one object per measurement.
FAKE_PEERS = '''
import json, sys
precision = [a for a in sys.argv if a.startswith('--precision=')][0].split('=')[1]
rate = {'fp32': 1.0, 'tf32': 2.0}[precision]
print(json.dumps({'precision': precision, 'torch': 'fake', 'gpu': 'none'}))
print('a line that is not JSON')
print(json.dumps({'mode': 'eager', 'models': 1, 'img_per_s': 100 * rate}))
print(json.dumps({'mode': 'graphs', 'models': 1, 'img_per_s': 300 * rate}))
print(json.dumps({'mode': 'vmap', 'models': 8, 'img_per_s': 1000 * rate}))
print(json.dumps({'mode': 'vmap', 'models': 64, 'error': 'RuntimeError(out of memory)'}))
print(json.dumps({'mode': 'loop', 'models': 8, 'img_per_s': 500 * rate}))
'''


def test_a_child_past_its_timeout_is_killed_and_keeps_what_it_printed():
  proc = bench.run_child([sys.executable, '-c', 'import time; print("RESULT {}", flush=True); '
                          'time.sleep(60)'], timeout=3)
  assert proc['timed_out'] and proc['rc'] is None and proc['wall_s'] < 30
  assert 'RESULT {}' in proc['stdout']
  done = bench.run_child([sys.executable, '-c', 'import sys; sys.exit(3)'], timeout=30)
  assert not done['timed_out'] and done['rc'] == 3


def test_peers_are_compared_at_matched_precision_only(tmp_path):
  script = tmp_path / 'peers.py'
  script.write_text(FAKE_PEERS)
  runs = [bench_gpu.torch_gpu_peers(sys.executable, str(script), p, [8, 64], 10, str(tmp_path), 30)
          for p in ('fp32', 'tf32')]
  assert [len(r['rows']) for r in runs] == [5, 5] and runs[0]['header']['torch'] == 'fake'
  assert bench_gpu.torch_best(runs, 'float32', 1) == {'mode': 'graphs', 'models': 1,
                                                  'img_per_s': 300}
  assert bench_gpu.torch_best(runs, 'tf32', 8)['img_per_s'] == 2000  # vmap beats loop
  assert bench_gpu.torch_best(runs, 'float32', 64) is None  # the peer failed there
  assert bench_gpu.torch_best(runs, 'bfloat16', 1) is None  # no peer at that arithmetic
  assert bench_gpu.torch_best(runs, 'default', 8) is None
  json.dumps(runs)  # all of it goes to --json_out


def test_environment_names_the_device_and_versions():
  env = bench.environment()
  assert env['device_kind'] and env['jax'] and env['flax']
  if env['backend'] == 'cpu':
    assert env['tf32'] is False


def test_importing_bench_defines_no_flags():
  # cli.py defines --idx_dir too, on the same global FLAGS, in the same test process.
  assert 'suite' not in flags.FLAGS and 'budget_s' not in flags.FLAGS
