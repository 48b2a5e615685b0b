"""Sweep expansion, flag parsing and the command line end to end on a tiny dataset."""
import csv
import json
import os
import subprocess
import sys

import pytest
from absl import flags

from conftest import float_tolerance, on_cpu, requires
from lenet_jax import cli
from lenet_jax import config as config_lib
from lenet_jax import sweep as sweep_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_expand_is_the_product_times_seeds():
  sweep = sweep_lib.Sweep(config_lib.default(),
                          {'model.channels': [(6, 16), (12, 32)],
                           'model.kernel_size': [(3,), (5,)]}, seeds=(0, 1))
  configs = sweep_lib.expand(sweep)
  assert len(configs) == 8
  assert [c.seed for c in configs[:2]] == [0, 1]
  assert {(c.model.channels, c.model.kernel_size) for c in configs} == {
      ((6, 16), (3,)), ((6, 16), (5,)), ((12, 32), (3,)), ((12, 32), (5,))}
  assert len({sweep_lib.run_id(c) for c in configs}) == 8


def test_groups_batch_seeds_and_learning_rates_of_one_architecture():
  sweep = sweep_lib.Sweep(config_lib.default(),
                          {'model.kernel_size': [(3,), (5,)],
                           'optim.learning_rate': [1e-3, 3e-3]}, seeds=(0, 1, 2))
  configs = sweep_lib.expand(sweep)
  batches = sweep_lib.groups(configs, max_models=4)
  # 6 runs per kernel size at most 4 a group: two groups of 3 each, one width.
  assert [len(b) for b in batches] == [3, 3, 3, 3]
  for b in batches:
    assert len({c.model.kernel_size for c in b}) == 1
  assert sorted(sweep_lib.widths(configs, max_models=4).values()) == [3, 3]
  assert [len(b) for b in sweep_lib.groups(configs[:5] + configs[6:], max_models=4)] == [
      3, 2, 3, 3]  # 5 runs of the 3x3: 3 and 2, never 4 and 1


@pytest.fixture
def parsed():
  def parse(*args):
    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv(['run.py', *args])
    return cli.sweep_from_flags(fv)
  return parse


def test_flag_syntax(parsed):
  sweep = parsed('--channels=6,16', '--channels=12,32', '--kernel_size=3',
                 '--kernel_size=5', '--learning_rate=1e-3,3e-3', '--activation=tanh',
                 '--padding=same', '--seeds=3', '--first_seed=10', '--dense=none')
  assert sweep.axes == {'model.channels': [(6, 16), (12, 32)],
                        'model.kernel_size': [(3,), (5,)],
                        'optim.learning_rate': [1e-3, 3e-3]}
  assert sweep.base.model.activation == 'tanh'
  assert sweep.base.model.padding == ('same',)
  assert sweep.base.model.dense == ()
  assert sweep.seeds == (10, 11, 12)
  assert parsed('--recipe=d2l').base == config_lib.d2l()
  # frozen is one whole value per flag: both layers frozen, not a sweep over them
  both = parsed('--frozen=block1_conv1,block2_conv1')
  assert both.axes == {} and both.base.optim.frozen == ('block1_conv1', 'block2_conv1')


@pytest.mark.parametrize('args, message', [
    (['--channels=6,x'], "--channels: 'x' is not a valid int"),
    (['--learning_rate=fast'], "--learning_rate: 'fast' is not a valid float"),
    (['--recipe=lenet1'], "recipe='lenet1' is unknown"),
    (['--seeds=0'], '--seeds=0 must be >= 1'),
])
def test_bad_flags_name_the_value(parsed, args, message):
  with pytest.raises(ValueError, match='.*') as e:
    parsed(*args)
  assert message in str(e.value)


def _run(*args, env=None):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'run.py'), *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=600,
                        env={**os.environ, 'PYTHONPATH': ROOT, **(env or {})})


BAD_INPUTS = [
    (['--channels=6,16,32'], "padding=(2, 'valid') has 2 entries but channels=(6, 16, 32)"),
    (['--kernel_size=11', '--padding=valid'], 'output size 9 + 0 - 11 + 1 = -1'),
    (['--learning_rate=0'], 'optim.learning_rate=0.0 must be > 0'),
    (['--dataset=imagenet'], "dataset='imagenet' is unknown"),
    (['--activation=swish'], "model.activation='swish' is not one of"),
    (['positional'], 'unexpected arguments'),
    (['--frozen=conv1'], "optim.frozen names ['conv1'], which are not layers"),
    (['--batch_size=0'], 'batch_size=0 must be a positive integer'),
    (['--kernel_size=12'], 'model.kernel_size[0]=12 must be an integer in 1..11'),
    (['--padding=-1'], "model.padding[0]=-1 must be 'same', 'valid' or a non-negative"),
    # Numbers that would train garbage.
    (['--learning_rate=inf'], 'optim.learning_rate=inf must be a finite number'),
    (['--momentum=nan'], 'optim.momentum=nan must be a finite number'),
    (['--momentum=-0.5'], 'optim.momentum=-0.5 must be in [0, 1)'),
    (['--weight_decay=nan'], 'optim.weight_decay=nan must be a finite number'),
    (['--step_decay_factor=-0.1'], 'optim.step_decay_factor=-0.1 must be in (0, 1]'),
    (['--num_classes=5'], "model.num_classes=5 is smaller than the 10 classes of "
                          "dataset='fashion_mnist'"),
    (['--max_models=0'], '--max_models=0 must be a positive integer'),
    (['--target_test_acc=nan'], '--target_test_acc=nan must be an accuracy in (0, 1]'),
    (['--target_test_acc=2'], '--target_test_acc=2.0 must be an accuracy in (0, 1]'),
    (['--first_seed=18446744073709551616'], 'seed=18446744073709551616 must be an integer '
                                            'in 0..4294967295'),
    (['--first_seed=-1'], 'seed=-1 must be an integer in 0..4294967295'),
    # A value given twice would train one run twice and count it as two seeds.
    (['--learning_rate=1e-3,0.001'], '--learning_rate (optim.learning_rate) gives the value '
                                     '0.001 twice'),
    (['--epochs=1', '--epochs=1'], '--epochs (epochs) gives the value 1 twice'),
    (['--channels=6,16', '--channels=6,16'], 'gives the value (6, 16) twice'),
    # absl's own parse errors: one line, status 2 (absl alone exits 1 with its usage).
    (['--seeds=x'], "error: flag --seeds=x: invalid literal for int() with base 10: 'x'"),
    (['--no_such_flag=1'], "error: Unknown command line flag 'no_such_flag'"),
]

# run.py's own steps (absl's parse, then cli.main) for each argument list, in
# one process: a process per case would spend the test's time importing JAX.
_CATALOGUE = '''
import contextlib, io, json, sys, traceback
from absl import flags
from lenet_jax import cli
cli.define_flags()
results = []
for args in json.loads(sys.argv[1]):
  flags.FLAGS.unparse_flags()
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    try:
      status = cli.main(cli.parse_flags(['run.py', '--describe', *args]))
    except SystemExit as e:
      status = e.code
    except BaseException:  # what a user would see as a traceback
      traceback.print_exc()
      status = 'raised'
  results.append([status, err.getvalue()])
print(json.dumps(results))
'''


def test_the_command_line_rejects_bad_input_before_training():
  proc = subprocess.run([sys.executable, '-c', _CATALOGUE, json.dumps([a for a, _ in BAD_INPUTS])],
                        capture_output=True, text=True, cwd=ROOT, timeout=600,
                        env={**os.environ, 'PYTHONPATH': ROOT})
  assert proc.returncode == 0, proc.stderr
  for (args, message), (status, stderr) in zip(BAD_INPUTS, json.loads(proc.stdout)):
    assert status == 2, (args, stderr)
    assert message in stderr, (args, stderr)
    assert 'Traceback' not in stderr and len(stderr.strip().splitlines()) == 1, (args, stderr)


@pytest.mark.parametrize('args, message', [BAD_INPUTS[2], BAD_INPUTS[-2]])
def test_run_py_exits_2_with_one_line(args, message):
  """The catalogue's steps are run.py's: two cases through run.py itself."""
  proc = _run('--describe', *args)
  assert proc.returncode == 2, proc.stderr
  assert message in proc.stderr
  assert 'Traceback' not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.native_cpu
def test_native_conv_without_a_compiler_is_a_clear_error(tmp_path):
  proc = _run('--describe', '--conv_impl=native',
              env={'CXX': '/nonexistent/g++', 'LENET_JAX_NATIVE_DIR': str(tmp_path)})
  assert proc.returncode == 2, proc.stderr
  assert "model.conv_impl='native' cannot run here" in proc.stderr
  assert 'apt-get install g++' in proc.stderr and "'patches'" in proc.stderr


def test_describe_prints_the_trace_without_training():
  proc = _run('--describe', '--kernel_size=3', '--padding=1,valid', '--convs_per_block=2')
  assert proc.returncode == 0, proc.stderr
  assert 'block1_conv2' in proc.stdout and 'block2_conv2' in proc.stdout
  assert 'forward FLOPs' in proc.stdout


@requires('tensorboardX')  # run.py writes TensorBoard files by default
def test_a_sweep_end_to_end_writes_runs_and_a_table(idx_dir, tmp_path):
  workdir = tmp_path / 'sweep'
  proc = _run('--dataset=mnist', f'--idx_dir={idx_dir}', '--validation_size=200',
              '--channels=4,8', '--channels=6,8', '--dense=16', '--epochs=2',
              '--batch_size=100', '--seeds=2', f'--workdir={workdir}', '--cache_dir=')
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  assert f'from idx:{idx_dir}' in out
  assert '[runs 1-2 of 4] epoch 2/2' in out and 'left' in out
  assert 'channels' in out and 'test_acc' in out and '2/2' in out
  with open(workdir / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 4
  assert {r['model.channels'] for r in rows} == {'4,8', '6,8'}
  assert all(r['status'] == 'ok' and 0 <= float(r['test_acc']) <= 1 for r in rows)
  jsonl = [json.loads(line) for line in open(workdir / 'results.jsonl')]
  assert [r['run_id'] for r in jsonl] == [r['run_id'] for r in rows]
  for r in rows:
    run_dir = workdir / 'runs' / r['run_id']
    config = json.load(open(run_dir / 'config.json'))
    assert config['model']['channels'] in ([4, 8], [6, 8])
    epochs = [json.loads(line) for line in open(run_dir / 'metrics.jsonl')]
    assert [e['epoch'] for e in epochs] == [1, 2]
    assert {'train_loss', 'val_acc', 'test_acc', 'images_per_s', 'seconds'} <= set(epochs[0])


@requires('tensorboardX')
def test_group_modes_train_the_same_runs(idx_dir, tmp_path):
  """--group_mode=vmap (all at once) and in_turn give each run the same result."""
  # Off the CPU both train in full float32, where XLA would otherwise use TF32
  # (tests/conftest.py), and agree within float_tolerance's floor.
  env = None if on_cpu() else {'JAX_DEFAULT_MATMUL_PRECISION': 'float32'}
  atol = float_tolerance(atol=1e-4)['atol']
  rows = {}
  for mode in ('vmap', 'in_turn'):
    workdir = tmp_path / mode
    proc = _run('--dataset=mnist', f'--idx_dir={idx_dir}', '--validation_size=200',
                '--channels=4,8', '--dense=16', '--epochs=2', '--batch_size=100',
                '--seeds=2', '--learning_rate=1e-3,3e-3', f'--group_mode={mode}',
                f'--workdir={workdir}', '--cache_dir=', env=env)
    assert proc.returncode == 0, proc.stderr
    with open(workdir / 'results.csv') as f:
      rows[mode] = {r['run_id']: r for r in csv.DictReader(f)}
  assert len(rows['vmap']) == 4 and rows['vmap'].keys() == rows['in_turn'].keys()
  for run_id, row in rows['vmap'].items():
    for key in ('train_loss', 'val_loss', 'test_loss'):
      assert abs(float(row[key]) - float(rows['in_turn'][run_id][key])) < atol, (key, row)


def test_help_documents_the_sweep_syntax_and_every_flag():
  proc = _run('--help')  # absl exits with status 1 after printing help
  assert 'Sweep syntax' in proc.stdout
  for flag in ('--channels', '--kernel_size', '--learning_rate', '--seeds', '--workdir',
               '--num_shards', '--[no]merge'):
    assert flag in proc.stdout, flag
  assert '--epochs: passes over the training set' in proc.stdout


def test_points_that_resolve_to_one_configuration_are_refused():
  sweep = sweep_lib.Sweep(config_lib.default(), {'data.validation_size': [None, 5000]})
  with pytest.raises(ValueError, match=r'the sweep points \(validation_size=None\) and '
                                       r'\(validation_size=5000\) are the same configuration'):
    sweep_lib.expand(sweep)


def test_auto_group_size_resumes_as_recorded_and_shards_need_one_size(monkeypatch, tmp_path):
  from lenet_jax import resources  # pylint: disable=import-outside-toplevel
  configs = sweep_lib.expand(sweep_lib.Sweep(config_lib.default(), {}, seeds=(0, 1)))
  workdir = tmp_path / 'w'
  workdir.mkdir()
  (workdir / 'sweep.json').write_text('{"execution": {"group_mode": "in_turn", "max_models": 3}}')
  assert sweep_lib.resolve_max_models('auto', configs, str(workdir), stacked=False) == 3
  assert sweep_lib.resolve_max_models(5, configs, str(workdir), stacked=False) == 5
  # Off the CPU, auto comes from free device memory, which shards need not share.
  monkeypatch.setattr(resources, 'auto_max_models',
                      lambda configs, stacked: 100 if stacked else resources.AUTO_CPU)
  assert sweep_lib.resolve_max_models('auto', configs, None, stacked=True) == 100
  with pytest.raises(ValueError, match='Give every shard --max_models=N'):
    sweep_lib.resolve_max_models('auto', configs, None, stacked=True, num_shards=2)


def test_dependency_warnings_show_once_on_one_line():
  """A library's warning, however often it is raised, is one line naming the library."""
  import io
  import warnings
  from lenet_jax import console
  stream = io.StringIO()
  with console.warnings_once(stream):
    for _ in range(3):
      warnings.warn_explicit('a deprecated\n  thing', UserWarning,
                             '/venv/lib/python3.11/site-packages/optax/_src/alias.py', 12)
    warnings.warn_explicit('another', RuntimeWarning,
                           '/venv/lib/python3.11/site-packages/jax/_src/core.py', 3)
  assert stream.getvalue().splitlines() == [
      'warning (optax): a deprecated thing [UserWarning]',
      'warning (jax): another [RuntimeWarning]']


def test_run_py_shows_a_dependency_warning_once_on_one_line(tmp_path, idx_dir):
  """A warning raised three times while run.py loads its data (as if by TFDS) is one
  line naming the library, without Python's file-and-source-line display."""
  script = tmp_path / 'warn_then_run.py'
  script.write_text(
      'import runpy, sys, warnings\n'
      'from lenet_jax import data\n'
      'load = data.load\n'
      'def warning_load(cfg):\n'
      '  for _ in range(3):\n'
      "    warnings.warn_explicit('tfds says hello', UserWarning,\n"
      "                           '/x/site-packages/tensorflow_datasets/core.py', 1)\n"
      '  return load(cfg)\n'
      'warning_load.cache_clear = load.cache_clear\n'
      'data.load = warning_load\n'
      f'sys.argv = [{os.path.join(ROOT, "run.py")!r}] + sys.argv[1:]\n'
      f'runpy.run_path({os.path.join(ROOT, "run.py")!r}, run_name="__main__")\n')
  proc = subprocess.run(
      [sys.executable, str(script), '--dataset=mnist', f'--idx_dir={idx_dir}', '--epochs=1',
       '--dense=16', '--channels=4,8', '--validation_size=200', '--batch_size=100',
       '--cache_dir='],
      capture_output=True, text=True, cwd=ROOT, timeout=300,
      env={**os.environ, 'PYTHONPATH': ROOT})
  assert proc.returncode == 0, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if 'tfds says hello' in l]
  assert lines == ['warning (tensorflow_datasets): tfds says hello [UserWarning]']
  assert 'warn_explicit' not in proc.stderr
