"""Every experiment's quick mode runs end to end; the framework resumes, selects and pairs.

Quick mode on the tests' own small IDX dataset: the numbers mean nothing (the
report says so); what is tested is that each experiment trains its arms at
every rate of its grid, selects on validation, computes its paired
statistics and writes a complete report, and that a partial run resumes.
"""
import csv
import gzip
import importlib
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import requires, skip_unless_installed
from experiments import EXPERIMENTS
from experiments import evaluation
from experiments import protocol
from experiments import runner
from experiments import verdicts
from lenet_jax import data
from lenet_jax import runs
from lenet_jax import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERDICT_WORDS = ('different', 'equivalent within', 'inconclusive', 'not compared')
# A report of runs holds statistics (scipy) and plots (matplotlib).
REPORT_PACKAGES = ('scipy', 'matplotlib')


def overrides(idx_dir):
  return {'data.dataset': 'mnist', 'data.idx_dir': str(idx_dir), 'data.validation_size': 200}


@pytest.mark.parametrize('name', EXPERIMENTS)
def test_quick_mode_writes_a_report(name, idx_dir, tmp_path):
  data.load.cache_clear()
  module = importlib.import_module(f'experiments.{name}')
  if module.TRAINS:
    skip_unless_installed(*REPORT_PACKAGES)
  workdir = tmp_path / name
  status = runner.run(module, str(workdir), quick=True, data_overrides=overrides(idx_dir),
                      say=lambda _: None)
  text = status.text
  assert status.complete
  assert (workdir / 'report.md').read_text() == text
  assert text.startswith(f'# {module.TITLE}')
  for heading in ('**Question.**', '**Method.**', '## Answer', '## Reproduce'):
    assert heading in text
  for line in text.splitlines():  # every plot the report shows was written
    if line.startswith('!['):
      assert (workdir / line[line.index('(') + 1:-1]).is_file()
  if not module.TRAINS:
    return
  assert 'QUICK MODE' in text and f'idx:{idx_dir}' in text
  assert 'img/s' not in text  # throughput is not reported
  # The method states the budget these runs trained, not the full study's.
  assert f'Budget: {protocol.QUICK_EPOCHS} epochs' in text
  assert f'Budget: {protocol.FULL_EPOCHS} epochs' not in text
  for words in ('10 seeds', 'paired by seed', 'Holm', 'TOST'):
    assert words in protocol.protocol(), words
  with open(workdir / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  arms = min(len(module.arms(True)), protocol.QUICK_ARMS)
  # Per arm: every rate on the tuning seed, then the chosen rate on the other seed.
  tuning, rest = protocol.QUICK_TUNE_SEEDS, len(protocol.QUICK_SEEDS) - protocol.QUICK_TUNE_SEEDS
  assert len(rows) == arms * (protocol.QUICK_RATES * tuning + rest)
  assert all(r['status'] == 'ok' for r in rows)
  for arm in {r['arm'] for r in rows}:
    rates = {r['optim.learning_rate'] for r in rows if r['arm'] == arm and r['seed'] == '1'}
    assert len(rates) == 1 and rates < {r['optim.learning_rate'] for r in rows if r['arm'] == arm}
  # Every run is packed into one file, and read back from it.
  assert len(runs.run_ids(workdir)) == len(rows) and not (workdir / 'runs').exists()
  assert (workdir / runs.ARCHIVE_FILE).is_file()
  assert not list(workdir.glob('groups/*'))  # deleted once its runs are written
  assert '95% CI' in text and '+-' in text
  assert '## Learning rate per arm (chosen on validation)' in text
  assert 'possibly under-tuned' in text  # two rates: every choice is at an edge
  assert (workdir / 'curves.png').is_file()
  comparisons = text.split('## Paired comparisons')[1].split('\n## ')[0]
  assert any(w in comparisons for w in VERDICT_WORDS)
  assert (workdir / 'forest.png').is_file() == ('forest.png' in text)
  written = json.loads((workdir / verdicts.VERDICTS_FILE).read_text())
  for v in written.values():
    assert v['verdict'] in (stats.DIFFERENT, stats.INCONCLUSIVE) or v['verdict'].startswith(
        (stats.DIFFERENT + ', but within', 'equivalent within'))
  if getattr(module, 'HEADLINE', ()):
    assert '## Headline checks' in text and 'not run yet' in text


def _drop_from_archive(path, run_id, name):
  """Rewrites a packed-runs file without one file of one run (a lost file)."""
  with gzip.open(path, 'rt') as f:
    entries = [json.loads(line) for line in f]
  for entry in entries:
    if entry['run_id'] == run_id:
      entry['files'].pop(name, None)
      entry['binary'].pop(name, None)
  with gzip.open(path, 'wt') as f:
    f.writelines(json.dumps(e) + '\n' for e in entries)


@requires(*REPORT_PACKAGES)
def test_a_partial_run_writes_progress_and_resumes(idx_dir, tmp_path):
  """--max_minutes stops after a group; the next call trains the rest and reports."""
  data.load.cache_clear()
  module = importlib.import_module('experiments.learned_kernels')
  workdir = tmp_path / 'learned_kernels'
  said = []
  first = runner.run(module, str(workdir), quick=True, data_overrides=overrides(idx_dir),
                     max_minutes=0, say=said.append)
  per_group = protocol.QUICK_TUNE_SEEDS * protocol.QUICK_RATES  # the first arm's tuning runs
  assert not first.complete and first.finished == per_group
  assert any(s.startswith(f'partial: {per_group} of {first.total} runs; run the same command '
                          'again to continue') for s in said)
  assert any(s.startswith('estimate: the whole experiment is') for s in said)
  assert (workdir / 'progress.md').is_file() and not (workdir / 'report.md').exists()
  assert f'{per_group} of {first.total} runs have finished' in first.text
  # A kept parameter file lost after the run was packed: that run is trained again.
  kept = [r for r in runs.run_ids(workdir)
          if runs.read_run_file(str(workdir), r, runs.PARAMS_FILE) is not None]
  assert len(kept) == protocol.QUICK_RATES  # seed 0 only, per rate
  _drop_from_archive(workdir / runs.ARCHIVE_FILE, kept[0], runs.PARAMS_FILE)
  assert runs.read_run_file(str(workdir), kept[0], runs.PARAMS_FILE) is None
  said.clear()
  second = runner.run(module, str(workdir), quick=True, data_overrides=overrides(idx_dir),
                      say=said.append)
  assert second.complete and second.finished == second.total == first.total
  tuning_runs = len(module.arms(True)[:protocol.QUICK_ARMS]) * per_group
  assert said[0].startswith(f'{tuning_runs} runs ({per_group - 1} already finished')
  assert runs.read_run_file(str(workdir), kept[0], runs.PARAMS_FILE) is not None
  assert not (workdir / 'progress.md').exists() and (workdir / 'report.md').is_file()
  assert f'Its {second.total} runs trained for ' in second.text  # summed from the records
  # the runs the first call left, and the one whose parameter file was lost
  trained = second.total - per_group + 1
  assert f'This invocation trained {trained} of the {second.total} runs, in ' in second.text
  # Complete: a third call trains nothing and writes the same report.
  third = runner.run(module, str(workdir), quick=True, data_overrides=overrides(idx_dir),
                     say=said.append)
  assert 'This invocation trained no run: it wrote this report from runs finished before' in (
      third.text)
  strip = lambda t: [l for l in t.splitlines() if not l.startswith('This invocation')]
  assert strip(third.text) == strip(second.text)
  assert 'Not part of this experiment' not in third.text
  # A run directory outside the plan is named in the report, and left alone.
  (workdir / 'runs' / 'c0ffee000000').mkdir(parents=True)
  (workdir / 'runs' / 'c0ffee000000' / 'config.json').write_text('{}')
  fourth = runner.run(module, str(workdir), quick=True, data_overrides=overrides(idx_dir),
                      say=said.append)
  assert ('Not part of this experiment, and not read: 1 run(s) under `runs/` outside its plan'
          in fourth.text and 'c0ffee000000.' in fourth.text)
  assert strip(fourth.text)[:-2] == strip(third.text)


def _rows(arm, val, test, rates=(1e-3, 2e-3)):
  """Rows of one arm: val[rate][seed], test[rate][seed]."""
  return [{'run_id': f'{arm}-{rate}-{seed}', 'arm': arm, 'seed': seed, 'status': 'ok',
           protocol.LR: rate, 'val_acc': val[i][seed], 'test_acc': test[i][seed],
           'params': 1, 'flops': 1}
          for i, rate in enumerate(rates) for seed in range(len(val[i]))]


def test_rates_are_selected_on_validation_and_differences_paired_by_seed():
  arms = [protocol.Arm('ref', {}), protocol.Arm('other', {})]
  # 'other': validation prefers the first rate although its test accuracy is lower.
  rows = (_rows('ref', [[.80, .81, .82], [.90, .91, .92]], [[.80, .81, .82], [.90, .91, .92]]) +
          _rows('other', [[.95, .95, .95], [.50, .50, .50]], [[.91, .92, .93], [.99, .99, .99]]))
  selected = verdicts.select_rates(arms, rows)
  assert selected['ref'].chosen == {protocol.LR: 2e-3}
  assert selected['other'].chosen == {protocol.LR: 1e-3}
  [outcome] = verdicts.compare_contrasts([protocol.Contrast('other', 'ref')], selected, 0.005)
  comp = outcome.comparison
  # Paired: every seed differs by exactly +0.01, so the interval is that point.
  assert comp.test.se == 0 and abs(comp.test.estimate - 0.01) < 1e-12
  assert comp.verdict == stats.DIFFERENT
  assert verdicts.plain_words(outcome, 0.005) == 'higher'
  assert '**different**' in verdicts.reading(outcome, 0.005)


def test_rates_are_selected_on_the_tuning_seeds_only():
  arms = [protocol.Arm('a', {})]
  # Seeds 0-1 tune; seed 2 trained at the chosen rate only, and its runs do not vote.
  rows = _rows('a', [[.90, .90], [.80, .80]], [[.9, .9], [.8, .8]])
  rows += _rows('a', [[0, 0, .70]], [[0, 0, .75]], rates=(1e-3,))[2:]
  selected = verdicts.select_rates(arms, rows, tune_seeds=(0, 1))
  assert selected['a'].chosen == {protocol.LR: 1e-3}
  assert sorted(r['seed'] for r in selected['a'].runs) == [0, 1, 2]  # reported on every seed
  assert [len(c.runs) for c in selected['a'].candidates.values()] == [2, 2]


def _tuning_rows(val_by_rate, seeds=(0, 1, 2)):
  return [{'run_id': f'a-{rate}-{seed}', 'arm': 'a', 'seed': seed, 'status': 'ok',
           protocol.LR: rate, 'val_acc': val, 'test_acc': val}
          for rate, val in val_by_rate.items() for seed in seeds]


def test_a_rate_chosen_at_the_edge_of_its_grid_extends_the_grid():
  base, arms, seeds = protocol.base(quick=False), [protocol.Arm('a', {})], (0, 1, 2)
  grids = lambda vals, quick=False: verdicts.tuning_grids(arms, base, quick, _tuning_rows(vals),
                                                          seeds)
  # The highest rate wins: the next one up trains on the tuning seeds before any choice.
  assert grids({1e-3: .80, 2e-3: .81, 4e-3: .82}) == ({'a': (1e-3, 2e-3, 4e-3, 8e-3)}, {})
  # ... and loses: the choice is interior.
  assert grids({1e-3: .80, 2e-3: .81, 4e-3: .82, 8e-3: .79}) == (
      {'a': (1e-3, 2e-3, 4e-3, 8e-3)}, {'a': 4e-3})
  # The lowest wins: the grid grows downwards, at its own spacing.
  assert grids({1e-3: .85, 2e-3: .81, 4e-3: .80})[0] == {'a': (5e-4, 1e-3, 2e-3, 4e-3)}
  # At most MAX_EXTENSIONS per side; then the edge is chosen (and the report flags it).
  rising = {1e-3: .80, 2e-3: .81, 4e-3: .82, 8e-3: .83, 1.6e-2: .84, 3.2e-2: .85, 6.4e-2: .86}
  assert protocol.MAX_EXTENSIONS == 4
  assert grids(rising) == ({'a': tuple(rising)}, {'a': 6.4e-2})
  # Short of the limit, the last rate of a still-rising grid is not chosen yet.
  assert grids(dict(list(rising.items())[:5])) == ({'a': (*list(rising)[:5], 3.2e-2)}, {})
  # A tuning run missing: no choice yet. Quick mode never extends.
  incomplete = _tuning_rows({1e-3: .80, 2e-3: .81, 4e-3: .82})[:-1]
  assert verdicts.tuning_grids(arms, base, False, incomplete, seeds) == (
      {'a': (1e-3, 2e-3, 4e-3)}, {})
  assert grids({1e-3: .80, 2e-3: .81}, quick=True) == ({'a': (1e-3, 2e-3)}, {'a': 2e-3})
  # A custom grid extends at its own spacing (x3 here).
  sgd = [protocol.Arm('a', {'optim.optimizer': 'sgd'}, rates=(0.3, 0.9, 2.7))]
  assert verdicts.tuning_grids(sgd, base, False, _tuning_rows({0.3: .8, 0.9: .8, 2.7: .9}),
                               seeds)[0] == {'a': (0.3, 0.9, 2.7, 8.1)}


def test_a_headline_check_holds_only_with_the_same_verdict_and_sign():
  arms = [protocol.Arm('ref', {}), protocol.Arm('other', {})]
  rows = (_rows('ref', [[.80, .81, .82], [.90, .91, .92]], [[.80, .81, .82], [.90, .91, .92]]) +
          _rows('other', [[.95, .95, .95], [.50, .50, .50]], [[.91, .92, .93], [.99, .99, .99]]))
  [outcome] = verdicts.compare_contrasts([protocol.Contrast('other', 'ref')],
                                         verdicts.select_rates(arms, rows), 0.005)
  here = outcome.comparison  # "different", +0.01
  assert verdicts.holds(here, {'verdict': stats.DIFFERENT, 'estimate': 0.02}) == 'holds'
  assert verdicts.holds(here, {'verdict': stats.DIFFERENT, 'estimate': -0.02}) == (
      'does not hold (opposite sign)')
  assert verdicts.holds(here, {'verdict': stats.INCONCLUSIVE, 'estimate': 0.01}) == 'does not hold'
  assert verdicts.holds(None, {'verdict': stats.DIFFERENT, 'estimate': 0.01}) == 'does not hold'


def test_a_rate_that_diverged_on_one_seed_is_not_selected():
  arms = [protocol.Arm('a', {})]
  rows = _rows('a', [[.80, .80], [.99, .99]], [[.8, .8], [.9, .9]])
  rows[3]['status'] = 'diverged'
  assert verdicts.select_rates(arms, rows)['a'].chosen == {protocol.LR: 1e-3}


def test_contrasts_of_other_metrics_pair_within_the_same_runs():
  arms = [protocol.Arm('a', {})]
  rows = _rows('a', [[.8, .8, .8], [.1, .1, .1]], [[.8, .8, .8], [.1, .1, .1]])
  for r, up in zip(rows, (.70, .71, .72, 0, 0, 0)):
    r['acc_up'], r['acc_down'] = up, up + 0.001
  selected = verdicts.select_rates(arms, rows)
  contrast = protocol.Contrast('a', 'a', 'acc_down', 'acc_up')
  [outcome] = verdicts.compare_contrasts([contrast], selected, 0.005)
  assert abs(outcome.comparison.test.estimate - 0.001) < 1e-9
  assert outcome.comparison.verdict == 'different, but within +-0.005'
  assert contrast.label == 'a: acc_down - acc_up'


def test_grids():
  base = protocol.base(quick=False)
  assert protocol.Arm('adam', {}).grid(base, quick=False) == (1e-3, 2e-3, 4e-3)
  assert protocol.Arm('adam', {}).grid(base, quick=True) == (1e-3, 2e-3)
  sgd = protocol.Arm('sgd', {'optim.optimizer': 'sgd'}, rates=(0.9, 0.3, 2.7))
  assert sgd.grid(base, quick=False) == (0.3, 0.9, 2.7)
  with pytest.raises(ValueError, match='distinct learning rates'):
    protocol.Arm('x', {}, rates=(0.1, 0.1)).grid(base, quick=False)
  shifted = evaluation.shift_images(__import__('numpy').arange(9).reshape(1, 3, 3, 1), 1, 0)
  assert shifted[0, :, :, 0].tolist() == [[0, 0, 0], [0, 1, 2], [3, 4, 5]]


def test_an_unknown_experiment_names_the_choices():
  proc = subprocess.run([sys.executable, '-m', 'experiments', 'channel_shrink'],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert proc.returncode == 2
  assert 'NAME is one of shapes, channel_growth' in proc.stderr
  assert "got ['channel_shrink']" in proc.stderr


def test_a_headline_check_of_an_experiment_without_headlines_is_refused(tmp_path):
  module = importlib.import_module('experiments.shapes')
  with pytest.raises(ValueError, match='declares no HEADLINE'):
    runner.run(module, str(tmp_path), quick=True, epochs=30, check=True)


@requires(*REPORT_PACKAGES)
def test_a_headline_check_states_the_budget_it_trained(idx_dir, tmp_path):
  """A check at more epochs says so in its method, not the full study's 15."""
  data.load.cache_clear()
  module = importlib.import_module('experiments.learned_kernels')
  status = runner.run(module, str(tmp_path), quick=True, data_overrides=overrides(idx_dir),
                      epochs=2, check=True, say=lambda _: None)
  assert status.complete
  text = (tmp_path / 'report.md').read_text()
  assert '> HEADLINE CHECK' in text and 'Budget: 2 epochs (cosine schedule)' in text
  assert '> QUICK MODE: 2 epoch(s) on' in text
  assert f'Budget: {protocol.FULL_EPOCHS} epochs' not in text


def test_the_command_line_is_quiet_and_stops_cleanly_on_sigterm(tmp_path):
  """No orbax INFO pages; SIGTERM (a scheduler's stop) ends it as Ctrl-C does: one line, 130."""
  workdir = tmp_path / 'w'
  proc = subprocess.Popen([sys.executable, '-u', '-m', 'experiments', 'learned_kernels',
                           '--quick', f'--workdir={workdir}'], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  seen = ['']
  while not seen[-1].startswith('training '):  # the first group has begun its epochs
    seen.append(proc.stdout.readline())
    assert seen[-1] or proc.poll() is None
  assert any('runs (0 already finished' in line for line in seen)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err
  # The epoch in progress was finished and its group checkpointed.
  assert [p for p in workdir.glob('groups/*/*') if p.name.isdigit()]
  assert 'Traceback' not in err and 'checkpoint_manager' not in err, err
  assert err.strip().splitlines()[-1].startswith(f'interrupted; every finished run and epoch '
                                                 f'checkpoint is in {workdir}')


def test_shapes_gives_the_reasons_for_shrinking_and_thickening():
  """Review point 8: the reasons (receptive field, compute, values per layer, shift
  tolerance within a window) are computed, and "pooling refines" is answered."""
  shapes = importlib.import_module('experiments.shapes')
  text = dict(shapes.analyse(None))['Why shrink the maps and grow the channels']
  assert 'see 16x16 input pixels after\n  pooling and only 9x9 without it' in text
  assert 'costs 0.83 MFLOPs' in text and 'pooling 5.23' in text and '400 to 9,216' in text
  assert '6 -> 16:\n  4,704 -> 1,176 -> 1,600 -> 400; 6 -> 6: 4,704 -> 1,176 -> 600 -> 150' in text
  # one lit pixel: a move inside the 2x2 window is absorbed, one across it is not
  assert 'column 0 -> [1, 0]; column 1 -> [1, 0]; column 2 -> [0, 1]' in text
  assert 'column 0 -> [0.25, 0]; column 1 -> [0.25, 0]; column 2 -> [0, 0.25]' in text
  assert '"Pooling refines each feature map"** is not what pooling does' in text
