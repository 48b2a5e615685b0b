"""The sweep report: the real command on a small real sweep, its tables, plots and errors."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import requires, separable_images, write_idx
from lenet_jax import report
from lenet_jax import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = (0, 1, 2)


@pytest.fixture(scope='session')
def sweep_dir(tmp_path_factory):
  """A real sweep: channels 4,8 / 6,8 x learning rate 1e-3 / 3e-3 x 3 seeds, 1 epoch,
  on the same separable IDX data as conftest's `idx_dir` (trained once)."""
  idx = tmp_path_factory.mktemp('idx')
  rng = np.random.default_rng(0)
  for prefix, n in (('train', 1200), ('t10k', 300)):
    images, labels = separable_images(n, rng)
    write_idx(idx / f'{prefix}-images-idx3-ubyte.gz', images)
    write_idx(idx / f'{prefix}-labels-idx1-ubyte.gz', labels)
  workdir = tmp_path_factory.mktemp('sweep')
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'run.py'), '--dataset=mnist', f'--idx_dir={idx}',
       '--validation_size=200', '--channels=4,8', '--channels=6,8', '--learning_rate=1e-3,3e-3',
       '--dense=16', '--epochs=1', '--batch_size=100', f'--seeds={len(SEEDS)}',
       f'--workdir={workdir}', '--cache_dir=', '--notensorboard'],
      capture_output=True, text=True, cwd=ROOT, timeout=600,
      env={**os.environ, 'PYTHONPATH': ROOT})
  assert proc.returncode == 0, proc.stderr
  return workdir


def _report(*args):
  return subprocess.run([sys.executable, '-m', 'lenet_jax.report', *map(str, args)],
                        capture_output=True, text=True, cwd=ROOT, timeout=300,
                        env={**os.environ, 'PYTHONPATH': ROOT})


def _rows(workdir):
  with open(os.path.join(workdir, 'results.jsonl')) as f:
    return [json.loads(line) for line in f]


def _of(rows, channels, lr, key):
  """seed -> `key` for one configuration of the fixture's sweep."""
  return {r['seed']: r[key] for r in rows
          if r['model.channels'] == channels and r['optim.learning_rate'] == lr}


def _is_png(path):
  with open(path, 'rb') as f:
    return f.read(8) == b'\x89PNG\r\n\x1a\n' and os.path.getsize(path) > 5000


# The report's statistics need scipy and its plots matplotlib.
REPORT_PACKAGES = requires('scipy', 'matplotlib')


@REPORT_PACKAGES
def test_the_report_compares_every_configuration_with_the_baseline(sweep_dir, tmp_path):
  out = tmp_path / 'out'
  proc = _report(sweep_dir, '--baseline=channels=4,8;learning_rate=0.001', f'--out={out}')
  assert proc.returncode == 0, proc.stderr
  text = (out / 'report.md').read_text()
  assert text.strip() in proc.stdout
  assert 'python -m lenet_jax.report' in text and '--baseline=' in text
  assert '12 runs in results.jsonl (12 ok); swept: channels (2 values), learning_rate (2 values)' in text
  for label in ('channels=4,8; learning_rate=0.001 (baseline) | 3/3',
                'channels=4,8; learning_rate=0.003 | 3/3',
                'channels=6,8; learning_rate=0.001 | 3/3', 'channels=6,8; learning_rate=0.003 | 3/3'):
    assert label in text, label
  assert 'Holm over the 3 comparison(s) made' in text

  # The paired rows hold the t test of the per-seed differences in results.jsonl.
  rows = _rows(sweep_dir)
  baseline = _of(rows, '4,8', 0.001, 'test_acc')
  comparisons = []
  for channels, lr in (('4,8', 0.003), ('6,8', 0.001), ('6,8', 0.003)):
    mine = _of(rows, channels, lr, 'test_acc')
    comparisons.append(stats.paired_t([mine[s] for s in SEEDS], [baseline[s] for s in SEEDS]))
  expected = stats.compare(comparisons, margin=0.005, alpha=0.05)
  table = text[text.index('| configuration | pairs |'):]
  for (channels, lr), c in zip((('4,8', 0.003), ('6,8', 0.001), ('6,8', 0.003)), expected):
    line = next(l for l in table.splitlines() if l.startswith(
        f'| channels={channels}; learning_rate={lr:g} |'))
    cells = [cell.strip() for cell in line.strip('|').split('|')]
    assert cells[1] == '3'
    assert cells[2] == f'{c.test.estimate:+.4f}'
    assert cells[4].startswith(f'[{c.interval[0]:+.4f}, {c.interval[1]:+.4f}]')
    assert cells[6] == f'{c.p_holm:.3g}'
    assert cells[8] == f'**{c.verdict}**'
    assert f'channels={channels}; learning_rate={lr:g}: **{c.verdict}**' in text
  assert _is_png(out / 'curves.png') and _is_png(out / 'forest.png')


@REPORT_PACKAGES
def test_tuning_selects_on_validation_and_reports_test(sweep_dir, tmp_path):
  proc = _report(sweep_dir, '--baseline=channels=4,8', '--tune=learning_rate', f'--out={tmp_path}')
  assert proc.returncode == 0, proc.stderr
  rows = _rows(sweep_dir)
  for channels in ('4,8', '6,8'):
    val = {lr: np.mean(list(_of(rows, channels, lr, 'val_acc').values())) for lr in (1e-3, 3e-3)}
    best = max(val, key=val.get)
    test = list(_of(rows, channels, best, 'test_acc').values())
    line = next(l for l in proc.stdout.splitlines() if l.startswith(f'| channels={channels}')
                and 'ok)' in l)
    assert f'| {best:g} |' in line, (line, val)
    assert report.ci_cell(test) in line
  assert '## test_acc against the baseline channels=4,8' in proc.stdout
  assert 'Holm over the 1 comparison(s) made' in proc.stdout
  assert _is_png(tmp_path / 'curves.png') and _is_png(tmp_path / 'forest.png')


@REPORT_PACKAGES
def test_missing_seeds_are_paired_on_the_common_ones_and_diverged_runs_noted(sweep_dir,
                                                                             tmp_path):
  workdir = tmp_path / 'edited'
  shutil.copytree(sweep_dir, workdir)
  rows = _rows(workdir)
  kept = []
  for r in rows:
    if r['model.channels'] == '6,8' and r['optim.learning_rate'] == 0.001 and r['seed'] == 2:
      continue  # never ran
    if r['model.channels'] == '4,8' and r['optim.learning_rate'] == 0.003 and r['seed'] == 0:
      r.update(status='diverged', diverged_epoch=1, val_acc=None, test_acc=None)
    if r['model.channels'] == '6,8' and r['optim.learning_rate'] == 0.003 and r['seed'] in (0, 1):
      r.update(status='diverged', diverged_epoch=1, val_acc=None, test_acc=None)
    kept.append(r)
  with open(workdir / 'results.jsonl', 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in kept)
  args = [str(workdir), '--baseline=channels=4,8;learning_rate=1e-3', f'--out={tmp_path / "out"}']
  assert report.main(args) == 2  # an unfinished sweep is refused ...
  assert not (tmp_path / 'out').exists()
  assert report.main(args + ['--allow_incomplete']) == 0  # ... unless asked for
  text = (tmp_path / 'out' / 'report.md').read_text()
  assert ('11 runs in results.jsonl (8 ok, 3 diverged) of 12 planned (1 not finished: see the '
          'notes)') in text
  assert ('1 of the 12 planned runs have not finished and are in no table: '
          'channels=6,8; learning_rate=0.001 seed 2.') in text
  assert 'channels=6,8; learning_rate=0.001 | 2/2' in text
  assert ('channels=6,8; learning_rate=0.001: paired on 2 common seed(s) of 3: seed(s) 2 not '
          'run in this configuration') in text
  assert ('channels=4,8; learning_rate=0.003: seed 0 diverged in epoch 1 (run '
          in text)
  assert 'left out of every mean, pair and choice' in text
  assert 'channels=6,8; learning_rate=0.003: not compared: 1 seed(s) finished in both' in text
  assert 'Holm over the 2 comparison(s) made' in text  # the uncomparable one is not in the family


@pytest.mark.parametrize('args, message', [
    (['{missing}', '--baseline=channels=4,8'], "workdir '{missing}' does not exist"),
    (['{empty}', '--baseline=channels=4,8'], 'has no results.jsonl, so no run has finished'),
    (['{corrupt}', '--baseline=channels=4,8'],
     '{corrupt}/sweep.json cannot be read as a sweep (JSONDecodeError'),
    (['{sweep}', '--baseline=channels=5,5;learning_rate=1e-3'],
     "--baseline='channels=5,5;learning_rate=1e-3' matches no configuration; the "
     "configurations are: 'channels=4,8; learning_rate=0.001'"),
    (['{sweep}', '--baseline=channels=4,8'],
     "--baseline='channels=4,8' matches 2 configurations ('channels=4,8; learning_rate=0.001', "
     "'channels=4,8; learning_rate=0.003'); name learning_rate as well"),
    (['{sweep}', '--baseline=chanels=4,8'],
     "--baseline: unknown field 'chanels'; the swept fields are: channels, learning_rate."),
    (['{sweep}', '--baseline=kernel_size=5'],
     '--baseline: kernel_size is not swept in this workdir'),
    (['{sweep}', '--baseline=channels=4,x'], "--channels: 'x' is not a valid int."),
    (['{sweep}', '--baseline=channels=4,8', '--tune=learning_rate', '--metric=top5_acc'],
     "--metric='top5_acc' is not a metric of these runs; choose one of train_loss, train_acc, "
     'val_loss, val_acc, test_loss, test_acc'),
    (['{sweep}', '--baseline=channels=4,8', '--tune=learning_rate', '--select_on=test_acc'],
     '--select_on=test_acc would select on the test set'),
    (['{sweep}', '--baseline=channels=4,8', '--tune=momentum'],
     '--tune: momentum is not swept in this workdir'),
    (['{sweep}', '--baseline=channels=4,8;learning_rate=1e-3', '--tune=learning_rate'],
     'names learning_rate, the field --tune chooses; leave it out of the baseline'),
    (['{sweep}', '--baseline=channels=4,8', '--tune=learning_rate', '--margin=0'],
     '--margin=0.0 must be a finite number > 0'),
    (['{sweep}', '--baseline=channels=4,8', '--margin=inf'],
     '--margin=inf must be a finite number > 0'),
    (['{sweep}', '--baseline=channels=4,8', '--margin=nan'],
     '--margin=nan must be a finite number > 0'),
    (['{sweep}', '--baseline=channels=4,8', '--margin=-0.01'],
     '--margin=-0.01 must be a finite number > 0'),
    (['{sweep}', '--baseline=channels=4,8', '--alpha=nan'], '--alpha=nan must be in (0, 0.5)'),
    (['{sweep}', '--baseline=channels=4,8;channels=6,8;learning_rate=1e-3'],
     "--baseline='channels=4,8;channels=6,8;learning_rate=1e-3' names channels twice"),
    (['{sweep}', '--baseline=channels=4,8;learning_rate=1e-3;learning_rate=3e-3'],
     'names learning_rate twice'),
    (['{sweep}', '--baseline=channels=4,8', '--margin=half'],
     "flag --margin=half: could not convert string to float: 'half'"),
    (['{sweep}', '--baseline=channels=4,8', '--metrc=val_acc'],
     "Unknown command line flag 'metrc'"),
    (['{sweep}'], '--baseline is required'),
    (['--baseline=channels=4,8'], 'give the --workdir of a sweep'),
    (['{partial}', '--baseline=channels=4,8;learning_rate=1e-3'],
     '1 of the 12 runs the sweep plans have not finished (first: channels=6,8; '
     'learning_rate=0.003 seed 2); finish the sweep'),
    (['{sweep}', '--baseline=channels=4,8', '--tune=learning_rate', '--alpha=0.5'],
     '--alpha=0.5 must be in (0, 0.5)'),
])
def test_bad_input_is_one_clear_message_and_exit_status_2(sweep_dir, tmp_path, capsys, args,
                                                         message):
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'corrupt').mkdir()
  shutil.copy(sweep_dir / 'results.jsonl', tmp_path / 'corrupt')
  (tmp_path / 'corrupt' / 'sweep.json').write_text('{"axes": ')  # cut off mid-write
  (tmp_path / 'partial').mkdir()  # the last run of the sweep has not finished
  shutil.copy(sweep_dir / 'sweep.json', tmp_path / 'partial')
  (tmp_path / 'partial' / 'results.jsonl').write_text(
      ''.join((sweep_dir / 'results.jsonl').read_text().splitlines(keepends=True)[:-1]))
  names = {'missing': tmp_path / 'nowhere', 'empty': tmp_path / 'empty',
           'corrupt': tmp_path / 'corrupt', 'sweep': sweep_dir, 'partial': tmp_path / 'partial'}
  status = report.main([a.format(**names) for a in args] + [f'--out={tmp_path / "out"}'])
  err = capsys.readouterr().err
  assert status == 2, err
  assert message.format(**names) in err
  assert err.startswith('error: ') and err.count('\n') == 1
  assert not (tmp_path / 'out').exists()


def test_the_command_exits_2_without_a_traceback(sweep_dir, tmp_path):
  """As a process: a workdir holding only shards is told to merge them first."""
  workdir = tmp_path / 'shards'
  workdir.mkdir()
  shutil.copy(sweep_dir / 'results.jsonl', workdir / 'results.shard-0-of-2.jsonl')
  proc = _report(workdir, '--baseline=channels=4,8')
  assert proc.returncode == 2
  assert proc.stderr.startswith('error: ') and 'Traceback' not in proc.stderr
  assert 'holds shard results (results.shard-0-of-2.jsonl) but no results.jsonl' in proc.stderr
  assert '--merge' in proc.stderr


def _one_configuration(sweep_dir, workdir, channels, lr):
  """A workdir holding one configuration of the fixture's sweep, as run.py writes a sweep
  of single values (sweep.json with no axes)."""
  rows = [r for r in _rows(sweep_dir)
          if r['model.channels'] == channels and r['optim.learning_rate'] == lr]
  os.makedirs(workdir / 'runs')
  for r in rows:
    shutil.copytree(sweep_dir / 'runs' / r['run_id'], workdir / 'runs' / r['run_id'])
  (workdir / 'results.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  sweep = json.loads((sweep_dir / 'sweep.json').read_text())
  sweep['base']['model']['channels'] = [int(c) for c in channels.split(',')]
  sweep['base']['optim']['learning_rate'] = lr
  (workdir / 'sweep.json').write_text(json.dumps({**sweep, 'axes': {}}))
  return rows


@REPORT_PACKAGES
def test_several_workdirs_are_one_sweep_whose_configurations_differ_between_them(
    sweep_dir, tmp_path):
  """Arms that change two fields together (not a Cartesian product) live in two
  workdirs; reported together, each is a configuration and they pair by seed."""
  base = _one_configuration(sweep_dir, tmp_path / 'a', '4,8', 0.001)
  arm = _one_configuration(sweep_dir, tmp_path / 'b', '6,8', 0.003)
  out = tmp_path / 'out'
  proc = _report(tmp_path / 'a', tmp_path / 'b', '--baseline=channels=4,8', f'--out={out}')
  assert proc.returncode == 0, proc.stderr
  text = (out / 'report.md').read_text()
  assert 'swept: channels (2 values), learning_rate (2 values)' in text
  assert 'Holm over the 1 comparison(s) made' in text
  by_seed = lambda rows: {r['seed']: r['test_acc'] for r in rows}
  [c] = stats.compare([stats.paired_t([by_seed(arm)[s] for s in SEEDS],
                                      [by_seed(base)[s] for s in SEEDS])], 0.005, 0.05)
  line = next(l for l in text.splitlines()
              if l.startswith('| channels=6,8; learning_rate=0.003 | 3 |'))
  assert f'{c.test.estimate:+.4f}' in line and f'**{c.verdict}**' in line
  assert 'no metrics.jsonl' not in text  # each run's curve read from its own workdir
  assert _is_png(out / 'curves.png') and _is_png(out / 'forest.png')


def test_several_workdirs_need_an_out_and_each_run_once(sweep_dir, tmp_path, capsys):
  _one_configuration(sweep_dir, tmp_path / 'a', '4,8', 0.001)
  shutil.copytree(tmp_path / 'a', tmp_path / 'copy')
  cases = [([tmp_path / 'a', tmp_path / 'copy', f'--out={tmp_path / "out"}'],
            'is in both {a} and {copy}: the same configuration and seed trained twice'),
           ([tmp_path / 'a', tmp_path / 'a', f'--out={tmp_path / "out"}'],
            'one is given twice'),
           ([tmp_path / 'a', sweep_dir], '2 workdirs and no --out')]
  for args, message in cases:
    status = report.main([str(a) for a in args] + ['--baseline=channels=4,8'])
    err = capsys.readouterr().err
    assert status == 2, err
    assert message.format(a=tmp_path / 'a', copy=tmp_path / 'copy') in err, err
    assert err.startswith('error: ') and err.count('\n') == 1
  assert not (tmp_path / 'out').exists()


def test_values_match_however_they_are_written():
  assert report.canonical('model.channels', '6,16') == (6, 16)
  assert report.canonical('model.channels', [6, 16]) == (6, 16)
  assert report.canonical('model.padding', '2,valid') == (2, 'valid')
  assert report.canonical('optim.frozen', '') == ()
  assert report.canonical('optim.learning_rate', 0.1 + 0.2) == report.canonical(
      'optim.learning_rate', 0.3)
  selector = report.parse_selector(' channels=6,16 ; learning_rate=1e-3 ',
                                   ['model.channels', 'optim.learning_rate'])
  assert selector == {'model.channels': (6, 16), 'optim.learning_rate': 0.001}
  assert report.show((6, 16)) == '6,16' and report.show(0.003) == '0.003'


def _row(seed, lr, val, test, status='ok'):
  return {'run_id': f'{lr}-{seed}', 'status': status, 'seed': seed,
          'optim.learning_rate': lr, 'val_acc': val, 'test_acc': test,
          'params': 1, 'flops': 2}


def test_tuning_never_looks_at_test_and_skips_values_that_diverged():
  # lr 0.1 is best on validation, 0.2 best on test, 0.3 best on validation of
  # the runs that finished but diverged on one seed.
  rows = ([_row(s, 0.1, 0.90, 0.80) for s in range(3)] +
          [_row(s, 0.2, 0.85, 0.95) for s in range(3)] +
          [_row(s, 0.3, 0.99, 0.99) for s in range(2)] + [_row(2, 0.3, None, None, 'diverged')])
  [group] = report.tune(report.group_rows(rows, ['optim.learning_rate']),
                        'optim.learning_rate', 'val_acc')
  assert group.chosen == {'optim.learning_rate': 0.1}
  assert [r['test_acc'] for r in group.runs] == [0.80] * 3
  [by_loss] = report.tune(report.group_rows(
      [dict(r, val_loss=r['val_acc']) for r in rows], ['optim.learning_rate']),
      'optim.learning_rate', 'val_loss')  # a loss is minimised
  assert by_loss.chosen == {'optim.learning_rate': 0.2}
  with pytest.raises(ValueError, match='would select on the test set'):
    report.tune(report.group_rows(rows, ['optim.learning_rate']), 'optim.learning_rate',
                'test_acc')


def test_two_runs_of_one_seed_cannot_be_paired():
  rows = [_row(0, 0.1, 0.9, 0.9), dict(_row(0, 0.1, 0.8, 0.8), run_id='other')]
  with pytest.raises(ValueError, match='has two runs with seed 0'):
    report.group_rows(rows, ['optim.learning_rate'])


@requires('matplotlib')
def test_a_forest_plot_turns_logarithmic_only_when_one_interval_dwarfs_the_margin(tmp_path):
  from lenet_jax import plots  # pylint: disable=import-outside-toplevel
  near = [(-0.004, 0.003), (0.001, 0.009)]
  assert plots.forest_linear_range(near, 0.005) is None
  assert plots.forest_linear_range(near + [(-0.10, -0.09)], 0.005) is None  # 20 margins: linear
  assert plots.forest_linear_range(near + [(-0.80, -0.77)], 0.005) == pytest.approx(0.02)
  assert plots.forest_linear_range(near + [(0.2, float('nan'))], 0.005) == pytest.approx(0.02)
  assert plots.forest_linear_range([(-1.0, 1.0)], 0.0) is None  # no margin: nothing to keep readable
  path = plots.forest(['a - b', 'c - b', 'd - b'], [0.0, 0.005, -0.78], near + [(-0.80, -0.77)],
                      ['equivalent', 'inconclusive', 'different'], 0.005, str(tmp_path / 'f.png'),
                      'difference', 'paired differences')
  assert _is_png(path)


@requires('scipy')
def test_runs_that_ended_near_chance_are_named_in_the_notes():
  def row(seed, lr, train_acc):
    return dict(_row(seed, lr, train_acc, train_acc), train_acc=train_acc,
                **{'model.num_classes': 10, 'model.channels': (6, 16)})
  rows = ([row(s, 0.1, 0.9) for s in range(4)] +
          [row(s, 0.2, 0.1 if s in (1, 3) else 0.9) for s in range(4)])
  assert report.near_chance(rows[5]) and not report.near_chance(rows[4])
  assert not report.near_chance(dict(rows[5], status='diverged'))  # named as diverged instead
  out = report.build(rows, ['optim.learning_rate'], report.Options('W', 'learning_rate=0.1'))
  [note] = [n for n in out.notes if 'near chance' in n]
  assert note.startswith('learning_rate=0.2: seeds 1, 3 (2 of 4) ended near chance')
  assert 'kept in every mean and pair' in note
  clean = [r for r in rows if r['train_acc'] > 0.5]
  assert not any('near chance' in n for n in report.build(
      clean, ['optim.learning_rate'], report.Options('W', 'learning_rate=0.1')).notes)


@REPORT_PACKAGES
def test_an_interrupted_report_leaves_the_previous_one_whole(sweep_dir, tmp_path, capsys,
                                                             monkeypatch):
  """Ctrl-C while the plots are drawn: exit 130, one line, the old report untouched and
  no half-written directory beside it."""
  from lenet_jax import plots
  out = tmp_path / 'out'
  args = [str(sweep_dir), '--baseline=channels=4,8;learning_rate=1e-3', f'--out={out}']
  assert report.main(args) == 0
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  assert set(before) == {'report.md', 'curves.png', 'forest.png'}
  capsys.readouterr()

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(plots, 'forest', interrupted)
  assert report.main(args + ['--margin=0.01']) == 130
  err = capsys.readouterr().err
  assert err == (f'interrupted: {out} holds the previous report (or none), or the whole '
                 'new one; never a part of one.\n')
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ['out']
  monkeypatch.undo()
  assert report.main(args + ['--margin=0.01']) == 0  # and the next one replaces it whole
  assert '+-0.01' in (out / 'report.md').read_text()
  assert sorted(p.name for p in tmp_path.iterdir()) == ['out']


def test_an_out_directory_holding_other_files_is_refused_not_replaced(sweep_dir, tmp_path,
                                                                       capsys):
  precious = tmp_path / 'results'
  precious.mkdir()
  (precious / 'notes.txt').write_text('mine')
  status = report.main([str(sweep_dir), '--baseline=channels=4,8;learning_rate=1e-3',
                        f'--out={precious}'])
  err = capsys.readouterr().err
  assert status == 2 and err.startswith('error: ') and err.count('\n') == 1, err
  assert f'{precious} holds other files (notes.txt)' in err
  assert (precious / 'notes.txt').read_text() == 'mine' and len(list(precious.iterdir())) == 1


def test_planned_runs_are_matched_as_the_sweep_resolved_them(tmp_path):
  """validation_size None is the dataset's default once resolved: a sweep over it is
  complete when every resolved run has a row."""
  from lenet_jax import config as config_lib
  from lenet_jax import sweep as sweep_lib
  sweep = sweep_lib.Sweep(config_lib.override(config_lib.default(), {'data.dataset': 'mnist'}),
                          {'data.validation_size': [None, 300]}, (0, 1))
  (tmp_path / 'sweep.json').write_text(json.dumps(sweep_lib.describe(sweep)))
  rows = [{'run_id': sweep_lib.run_id(c), 'seed': c.seed} for c in sweep_lib.expand(sweep)]
  assert report.unfinished_runs(str(tmp_path), rows) == (4, [])
  assert report.unfinished_runs(str(tmp_path), rows[1:]) == (
      4, ['validation_size=5000 seed 0'])


def test_a_plan_that_cannot_be_expanded_is_said_in_the_report(sweep_dir, tmp_path):
  workdir = tmp_path / 'old'
  shutil.copytree(sweep_dir, workdir)
  recorded = json.loads((workdir / 'sweep.json').read_text())
  recorded['axes']['model.channels'] = [[4, 8], [4, 8]]  # not a sweep expand accepts
  (workdir / 'sweep.json').write_text(json.dumps(recorded))
  args = [str(workdir), '--baseline=channels=4,8;learning_rate=1e-3', f'--out={tmp_path / "o"}']
  assert report.main(args) == 2
  assert report.main(args + ['--allow_incomplete']) == 0
  text = (tmp_path / 'o' / 'report.md').read_text()
  assert 'does not describe a sweep this version can expand' in text
  assert 'this report covers the runs that finished, whatever was planned' in text


def test_help_lists_the_flags(capsys):
  assert report.main(['--help']) == 0
  text = capsys.readouterr().out
  assert 'python -m lenet_jax.report WORKDIR' in text
  for flag in ('--baseline', '--margin', '--allow_incomplete', '--out', '--tune'):
    assert flag in text
