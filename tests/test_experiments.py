"""Every experiment's quick mode runs end to end; the framework resumes, selects and pairs.

Quick mode on the tests' own small IDX dataset: the numbers mean nothing (the
report says so); what is tested is that each experiment tunes its arms at
every rate of its grid on the tuning seeds, reports them on the other seeds at
the chosen rate (each run's best model on validation), computes its paired
statistics family by family and writes a complete report, that the checks
train the primary comparisons' arms and the main report compares their
verdicts, that a partial run resumes, and that a full-mode run starts only
under its committed pre-registration (`experiments.preregistration`, tested
in a temporary git repository, never the project's own).
"""
import csv
import dataclasses
import gzip
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from conftest import requires, skip_unless_installed
from experiments import EXPERIMENTS
from experiments import evaluation
from experiments import preregistration
from experiments import protocol
from experiments import runner
from experiments import training
from experiments import verdicts
from experiments import writeup
from lenet_jax import bootstrap
from lenet_jax import config as config_lib
from lenet_jax import data
from lenet_jax import loop
from lenet_jax import runs
from lenet_jax import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERDICT_WORDS = ('different', 'equivalent within', 'inconclusive', 'not compared')
# A report of runs holds statistics (scipy) and plots (matplotlib).
REPORT_PACKAGES = ('scipy', 'matplotlib')
TRAINING = [n for n in EXPERIMENTS if importlib.import_module(f'experiments.{n}').TRAINS]


def overrides(idx_dir):
  return {'data.dataset': 'mnist', 'data.idx_dir': str(idx_dir), 'data.validation_size': 200}


def _section(text, title):
  """The body of the report's section `## title`."""
  return text.split(f'\n## {title}\n')[1].split('\n## ')[0]


def _read_rows(workdir):
  with open(os.path.join(workdir, 'results.csv')) as f:
    return list(csv.DictReader(f))


def _quick_labels(module):
  return [a.label for a in module.arms(True)[:protocol.QUICK_ARMS]]


def _assert_rows_report_the_best_model(workdir, rows):
  """Each row's val_acc/test_acc are its best epoch's on validation (the earliest of
  ties), the last epoch's kept as last_*, and its kept per-example test correctness
  counts to that test accuracy."""
  for row in rows:
    history = runs.read_history(str(workdir), row['run_id'])
    best = loop.best_epoch(history)
    assert int(row['best_epoch']) == best and int(row['epochs_run']) == len(history)
    for key in ('val_acc', 'test_acc'):
      assert float(row[key]) == float(row[f'best_{key}']) == history[best - 1][key]
      assert float(row[f'last_{key}']) == history[-1][key]
    bits = runs.read_test_correct(str(workdir), row['run_id'])
    assert bits is not None and bits.dtype == bool
    assert abs(bits.mean() - float(row['test_acc'])) <= 0.01


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
    assert protocol.families_of(module) == []
    return
  assert 'QUICK MODE' in text and f'idx:{idx_dir}' in text and '> CHECK' not in text
  assert 'img/s' not in text  # throughput is not reported
  # The method states the budget these runs trained, not the full study's plateau rule.
  assert "Budget: 1 epoch(s), constant learning rate, the best-on-validation epoch's model." in text
  assert 'has not improved for' not in _section(text, 'Budget rule: where each run stopped')
  assert 'No plateau rule in this mode' in text
  # Quick mode is never a confirmatory result, and says so.
  assert 'Not pre-registered' in _section(text, 'Pre-registration')
  rows = _read_rows(workdir)
  labels = _quick_labels(module)
  assert {r['arm'] for r in rows} == set(labels)
  tuning = {str(s) for s in protocol.QUICK_TUNING_SEEDS}
  reported = {str(s) for s in protocol.QUICK_REPORT_SEEDS}
  # Per arm: every rate of its grid on the tuning seed, then one rate on the report seeds.
  assert len(rows) == len(labels) * (protocol.QUICK_RATES * len(tuning) + len(reported))
  assert all(r['status'] == 'ok' for r in rows)
  chosen = {}
  for arm in labels:
    mine = [r for r in rows if r['arm'] == arm]
    grid = {r['optim.learning_rate'] for r in mine if r['seed'] in tuning}
    assert len(grid) == protocol.QUICK_RATES
    pairs = [(r['optim.learning_rate'], r['seed']) for r in mine if r['seed'] in tuning]
    assert len(pairs) == len(set(pairs)) == len(grid) * len(tuning)
    at_report = {r['optim.learning_rate'] for r in mine if r['seed'] in reported}
    assert len(at_report) == 1 and at_report < grid
    assert sorted(r['seed'] for r in mine if r['seed'] in reported) == sorted(reported)
    chosen[arm] = at_report.pop()
  _assert_rows_report_the_best_model(workdir, rows)
  # Every run is packed into one file, and read back from it.
  assert len(runs.run_ids(workdir)) == len(rows) and not (workdir / 'runs').exists()
  assert (workdir / runs.ARCHIVE_FILE).is_file()
  assert not list(workdir.glob('groups/*'))  # deleted once its runs are written
  assert '95% CI' in text and '+-' in text
  assert '## Learning rate per arm (chosen on validation)' in text
  assert (f'over the tuning seeds ({", ".join(map(str, protocol.QUICK_TUNING_SEEDS))})'
          in text)
  assert 'possibly under-tuned' in text  # two rates: every choice is at an edge
  assert (workdir / 'curves.png').is_file()
  comparisons = _section(text, 'Paired comparisons')
  assert any(w in comparisons for w in VERDICT_WORDS)
  # The comparisons come family by family, each under its question and its
  # pre-registered hypothesis, in the order the module declares them.
  families = protocol.families_of(module, labels)
  assert families
  at = [comparisons.index(f'**{f.question}: {f.title}**') for f in families]
  assert at == sorted(at)
  for f in families:
    if f.hypothesis:
      assert f'Pre-registered hypothesis: {f.hypothesis}' in comparisons
  assert (workdir / 'forest.png').is_file() == ('forest.png' in text)
  # verdicts.json: the margin, and per comparison its verdict, test, family and the
  # run ids it paired: the report seeds' runs at each arm's chosen rate, never a tuning run.
  written = json.loads((workdir / verdicts.VERDICTS_FILE).read_text())
  assert set(written) == {'margin', 'dataset', 'patience', 'max_epochs', 'quick', 'registration',
                          'comparisons'}
  assert written['quick'] is True and written['registration'] is None  # answers nothing
  assert written['patience'] is None and written['max_epochs'] == protocol.QUICK_EPOCHS
  contrasts = {c.label: c for f in families for c in f.contrasts}
  family_of = {c.label: f.question for f in families for c in f.contrasts}
  by_id = {r['run_id']: r for r in rows}
  assert written['comparisons'] and set(written['comparisons']) <= set(contrasts)
  for label, v in written['comparisons'].items():
    assert v['verdict'] in (stats.DIFFERENT, stats.INCONCLUSIVE) or v['verdict'].startswith(
        (stats.DIFFERENT + ', but within', 'equivalent within'))
    if written['margin'] is None:  # no equivalence test on these data
      assert v['verdict'] in (stats.DIFFERENT, stats.INCONCLUSIVE)
    c = contrasts[label]
    assert v['family'] == family_of[label]
    both_test_acc = c.metric == (c.reference_metric or c.metric) == 'test_acc'
    assert v['test'] == ('NoNarrowerThan' if both_test_acc else 'TTest')
    assert v['seeds'] == len(v['runs']) == len(reported)
    for run_id, ref_id in v['runs']:
      ours, theirs = by_id[run_id], by_id[ref_id]
      assert (ours['arm'], theirs['arm']) == (c.arm, c.reference)
      assert ours['seed'] == theirs['seed'] and ours['seed'] in reported
      assert ours['optim.learning_rate'] == chosen[c.arm]
      assert theirs['optim.learning_rate'] == chosen[c.reference]
  # The checks repeat the primary comparisons; before they have run, the table says so.
  primary = {c.label for c in protocol.primary_contrasts(module)}
  if primary & set(contrasts):
    checks = _section(text, 'Checks')
    assert 'not run yet' in checks and '--patience=10 --quick' in checks
    assert f'--dataset={protocol.CHECK_DATASET} --quick' in checks
    table = [l for l in checks.splitlines() if l.startswith('| ') and '---' not in l][1:]
    assert {l.split(' | ')[0][2:] for l in table} == primary & set(contrasts)
  else:
    assert '## Checks' not in text


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
def test_a_partial_run_writes_progress_and_resumes(idx_dir, tmp_path, monkeypatch):
  """--max_minutes stops after a group; the next call trains the rest and reports."""
  data.load.cache_clear()
  # Quick mode needs no pre-registration: none exists here.
  monkeypatch.setattr(preregistration, 'DIRECTORY', str(tmp_path / 'no-preregistration'))
  module = importlib.import_module('experiments.learned_kernels')
  workdir = tmp_path / 'learned_kernels'
  said = []
  first = runner.run(module, str(workdir), quick=True, data_overrides=overrides(idx_dir),
                     max_minutes=0, say=said.append)
  # the first arm's tuning runs
  per_group = len(protocol.QUICK_TUNING_SEEDS) * protocol.QUICK_RATES
  arms = len(_quick_labels(module))
  assert first.total == arms * (per_group + len(protocol.QUICK_REPORT_SEEDS))
  assert not first.complete and first.finished == per_group
  assert any(s.startswith(f'partial: {per_group} of {first.total} runs; run the same command '
                          'again to continue') for s in said)
  assert any(s.startswith('estimate: the whole experiment is') for s in said)
  assert (workdir / 'progress.md').is_file() and not (workdir / 'report.md').exists()
  assert f'{per_group} of {first.total} runs have finished' in first.text
  assert not (workdir / preregistration.RECORD_FILE).exists()
  # KEEP_PARAMS is seed 0, a report seed: no tuning run keeps its parameters.
  assert module.KEEP_PARAMS == (0,) and 0 in protocol.QUICK_REPORT_SEEDS
  assert not [r for r in runs.run_ids(workdir)
              if runs.read_run_file(str(workdir), r, runs.PARAMS_FILE) is not None]
  said.clear()
  second = runner.run(module, str(workdir), quick=True, data_overrides=overrides(idx_dir),
                      say=said.append)
  assert second.complete and second.finished == second.total == first.total
  assert said[0].startswith(f'{arms * per_group} runs ({per_group} already finished')
  assert not (workdir / 'progress.md').exists() and (workdir / 'report.md').is_file()
  assert f'Its {second.total} runs trained for ' in second.text  # summed from the records
  assert (f'This invocation trained {second.total - per_group} of the {second.total} runs, in '
          in second.text)
  # Seed 0 of every arm, at its chosen rate, kept its (best) parameters.
  kept = [r for r in runs.run_ids(workdir)
          if runs.read_run_file(str(workdir), r, runs.PARAMS_FILE) is not None]
  rows = {r['run_id']: r for r in _read_rows(workdir)}
  assert sorted(rows[r]['arm'] for r in kept) == sorted(_quick_labels(module))
  assert all(rows[r]['seed'] == '0' for r in kept)
  # A kept parameter file lost after the run was packed: that run is trained again.
  _drop_from_archive(workdir / runs.ARCHIVE_FILE, kept[0], runs.PARAMS_FILE)
  assert runs.read_run_file(str(workdir), kept[0], runs.PARAMS_FILE) is None
  third = runner.run(module, str(workdir), quick=True, data_overrides=overrides(idx_dir),
                     say=said.append)
  assert runs.read_run_file(str(workdir), kept[0], runs.PARAMS_FILE) is not None
  assert f'This invocation trained 1 of the {second.total} runs, in ' in third.text
  # Complete: a further call trains nothing and writes the same report.
  fourth = runner.run(module, str(workdir), quick=True, data_overrides=overrides(idx_dir),
                      say=said.append)
  assert 'This invocation trained no run: it wrote this report from runs finished before' in (
      fourth.text)
  strip = lambda t: [l for l in t.splitlines() if not l.startswith('This invocation')]
  assert strip(fourth.text) == strip(third.text)
  assert 'Not part of this experiment' not in fourth.text
  # A run directory outside the plan is named in the report, and left alone.
  (workdir / 'runs' / 'c0ffee000000').mkdir(parents=True)
  (workdir / 'runs' / 'c0ffee000000' / 'config.json').write_text('{}')
  fifth = runner.run(module, str(workdir), quick=True, data_overrides=overrides(idx_dir),
                     say=said.append)
  assert ('Not part of this experiment, and not read: 1 run(s) under `runs/` outside its plan'
          in fifth.text and 'c0ffee000000.' in fifth.text)
  assert strip(fifth.text)[:-2] == strip(fourth.text)


def _rows(arm, val, test, rates=(1e-3, 2e-3), seeds=None):
  """Rows of one arm: val[rate][seed], test[rate][seed] (seeds default 0, 1, ...)."""
  return [{'run_id': f'{arm}-{rate}-{seed}', 'arm': arm, 'seed': seed, 'status': 'ok',
           protocol.LR: rate, 'val_acc': val[i][j], 'test_acc': test[i][j],
           'params': 1, 'flops': 1}
          for i, rate in enumerate(rates)
          for j, seed in enumerate(seeds if seeds is not None else range(len(val[i])))]


def _family(*contrasts, question='Q', hypothesis='h'):
  return protocol.Family(question, 'title', hypothesis, tuple(contrasts))


def test_rates_are_selected_on_validation_and_differences_paired_by_seed():
  arms = [protocol.Arm('ref', {}), protocol.Arm('other', {})]
  # 'other': validation prefers the first rate although its test accuracy is lower.
  rows = (_rows('ref', [[.80, .81, .82], [.90, .91, .92]], [[.80, .81, .82], [.90, .91, .92]]) +
          _rows('other', [[.95, .95, .95], [.50, .50, .50]], [[.91, .92, .93], [.99, .99, .99]]))
  selected = verdicts.select_rates(arms, rows)  # no tuning seeds: every seed tunes, and reports
  assert selected['ref'].chosen == {protocol.LR: 2e-3}
  assert selected['other'].chosen == {protocol.LR: 1e-3}
  family = _family(protocol.Contrast('other', 'ref'))
  [outcome] = verdicts.compare_families([family], selected, 0.005)
  assert outcome.family is family
  comp = outcome.comparison
  # Paired: every seed differs by exactly +0.01, so the interval is that point.
  assert isinstance(comp.test, stats.TTest)  # no per-example data: a paired t test
  assert comp.test.se == 0 and abs(comp.test.estimate - 0.01) < 1e-12
  assert comp.verdict == stats.DIFFERENT
  assert verdicts.plain_words(outcome, 0.005) == 'higher'
  assert '**different**' in verdicts.reading(outcome, 0.005)


def test_rates_are_tuned_on_the_tuning_seeds_and_reported_on_the_others_only():
  arms = [protocol.Arm('a', {})]
  tuning, report = (100, 101), (0, 1, 2)
  rows = _rows('a', [[.90, .90], [.80, .80]], [[.6, .6], [.99, .99]], seeds=tuning)
  # The report seeds at the chosen rate; and at the other rate, runs (an earlier
  # choice's, say) whose far better figures must neither vote nor be reported.
  rows += _rows('a', [[.70, .71, .72]], [[.75, .76, .77]], rates=(1e-3,), seeds=report)
  rows += _rows('a', [[.99, .99, .99]], [[.99, .99, .99]], rates=(2e-3,), seeds=report)
  selected = verdicts.select_rates(arms, rows, tune_seeds=tuning)['a']
  assert selected.chosen == {protocol.LR: 1e-3}
  assert sorted(r['seed'] for r in selected.runs) == list(report)  # no tuning seed
  assert {r[protocol.LR] for r in selected.runs} == {1e-3}
  assert [sorted(r['seed'] for r in c.runs) for c in selected.candidates.values()] == [
      list(tuning)] * 2
  # Chosen before any report seed has trained: nothing to report yet, nothing tuning leaks.
  only_tuning = [r for r in rows if r['seed'] in tuning]
  early = verdicts.select_rates(arms, only_tuning, tune_seeds=tuning)['a']
  assert early.chosen == {protocol.LR: 1e-3} and early.runs == []
  # ... so a comparison pairs report seeds only.
  other = [dict(r, arm='b', run_id='b' + r['run_id'][1:]) for r in rows]
  both = verdicts.select_rates([arms[0], protocol.Arm('b', {})], rows + other, tuning)
  [outcome] = verdicts.compare_families([_family(protocol.Contrast('b', 'a'))], both, 0.005)
  assert outcome.result.pairing.seeds == list(report)
  assert verdicts.paired_run_ids(outcome, both) == [[f'b-0.001-{s}', f'a-0.001-{s}']
                                                     for s in report]


def _tuning_rows(val_by_rate, seeds=protocol.TUNING_SEEDS):
  return [{'run_id': f'a-{rate}-{seed}', 'arm': 'a', 'seed': seed, 'status': 'ok',
           protocol.LR: rate, 'val_acc': val, 'test_acc': val}
          for rate, val in val_by_rate.items() for seed in seeds]


def test_a_rate_chosen_at_the_edge_of_its_grid_extends_the_grid():
  base, arms, seeds = protocol.base(quick=False), [protocol.Arm('a', {})], protocol.TUNING_SEEDS
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
  # Runs of the report seeds never vote, however good: here they would pick 1e-3.
  reported = _tuning_rows({1e-3: .99}, seeds=protocol.REPORT_SEEDS)
  assert verdicts.tuning_grids(arms, base, False, reported + _tuning_rows(
      {1e-3: .80, 2e-3: .82, 4e-3: .81}), seeds) == ({'a': (1e-3, 2e-3, 4e-3)}, {'a': 2e-3})
  # A custom grid extends at its own spacing (x3 here).
  sgd = [protocol.Arm('a', {'optim.optimizer': 'sgd'}, rates=(0.3, 0.9, 2.7))]
  assert verdicts.tuning_grids(sgd, base, False, _tuning_rows({0.3: .8, 0.9: .8, 2.7: .9}),
                               seeds)[0] == {'a': (0.3, 0.9, 2.7, 8.1)}


def test_a_check_holds_only_with_the_same_verdict_and_sign():
  arms = [protocol.Arm('ref', {}), protocol.Arm('other', {})]
  rows = (_rows('ref', [[.80, .81, .82], [.90, .91, .92]], [[.80, .81, .82], [.90, .91, .92]]) +
          _rows('other', [[.95, .95, .95], [.50, .50, .50]], [[.91, .92, .93], [.99, .99, .99]]))
  [outcome] = verdicts.compare_families([_family(protocol.Contrast('other', 'ref'))],
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
  # Per-example test correctness is there, but only test accuracy is bootstrapped.
  correct = lambda row: np.ones(10, bool)
  [outcome] = verdicts.compare_families([_family(contrast)], selected, 0.005, correct=correct)
  assert isinstance(outcome.comparison.test, stats.TTest)
  assert abs(outcome.comparison.test.estimate - 0.001) < 1e-9
  assert outcome.comparison.verdict == 'different, but within +-0.005'
  assert contrast.label == 'a: acc_down - acc_up'


def _bits(correct_count, n, seed):
  """n per-example answers of which `correct_count` are right, placed by `seed`."""
  out = np.zeros(n, bool)
  out[np.random.default_rng(seed).permutation(n)[:correct_count]] = True
  return out


def test_test_accuracy_is_compared_by_a_bootstrap_over_seeds_and_test_images():
  arms = [protocol.Arm('ref', {}), protocol.Arm('other', {})]
  tuning, report, n = (100,), (0, 1, 2), 50
  bits = {}
  rows = []
  for arm, right in (('ref', 40), ('other', 45)):
    for seed in tuning + report:
      run_id = f'{arm}-{seed}'
      bits[run_id] = _bits(right + seed % 3, n, 2 * seed + (arm == 'ref'))
      rows.append({'run_id': run_id, 'arm': arm, 'seed': seed, 'status': 'ok',
                   protocol.LR: 1e-3, 'val_acc': .5, 'test_acc': bits[run_id].mean()})
  selected = verdicts.select_rates(arms, rows, tune_seeds=tuning)
  asked = []
  correct = lambda row: asked.append(row['seed']) or bits.get(row['run_id'])
  family = _family(protocol.Contrast('other', 'ref'))
  [outcome] = verdicts.compare_families([family], selected, 0.005, correct=correct)
  both = outcome.comparison.test  # the bootstrap, never narrower than the paired t
  assert isinstance(both, bootstrap.NoNarrowerThan) and isinstance(both.second, stats.TTest)
  test = both.first
  assert isinstance(test, bootstrap.BootstrapTest)
  assert (test.n, test.n_examples) == (len(report), n)
  a = np.stack([bits[f'other-{s}'] for s in report])
  b = np.stack([bits[f'ref-{s}'] for s in report])
  assert test.estimate == pytest.approx((a.astype(float) - b).mean())
  assert test.estimate == pytest.approx(np.mean([r['test_acc'] for r in rows if r['arm'] ==
                                                 'other' and r['seed'] in report]) -
                                        np.mean([r['test_acc'] for r in rows if r['arm'] ==
                                                 'ref' and r['seed'] in report]))
  assert set(asked) == set(report)  # the tuning seed's answers are never read
  # One run without its per-example answers: the paired t test over seeds instead.
  del bits['ref-1']
  [fallback] = verdicts.compare_families([family], selected, 0.005, correct=correct)
  assert isinstance(fallback.comparison.test, stats.TTest)
  assert fallback.comparison.test.estimate == pytest.approx(test.estimate)


def _four_arms():
  """A reference and three arms whose differences from it are noise: nothing is rejected."""
  labels = ('ref', 'a', 'b', 'c')
  arms = [protocol.Arm(label, {}) for label in labels]
  noise = {'ref': [.80, .80, .80, .80], 'a': [.81, .79, .82, .785],
           'b': [.79, .815, .78, .81], 'c': [.805, .79, .81, .80]}
  rows = [r for label in labels for r in _rows(label, [noise[label]], [noise[label]],
                                                rates=(1e-3,))]
  return verdicts.select_rates(arms, rows)


def test_holm_corrects_each_family_on_its_own():
  selected = _four_arms()
  first = _family(protocol.Contrast('a', 'ref'), protocol.Contrast('b', 'ref'), question='F1')
  second = _family(protocol.Contrast('c', 'ref'), question='F2')
  outcomes = verdicts.compare_families([first, second], selected, 0.005)
  assert [o.family.question for o in outcomes] == ['F1', 'F1', 'F2']
  assert all(o.comparison.p_holm > 0.05 for o in outcomes)  # nothing rejected ...
  levels = [o.comparison.level for o in outcomes]
  # ... so each interval is at 1 - alpha / (its family's size), not the experiment's.
  assert levels == pytest.approx([1 - 0.05 / 2, 1 - 0.05 / 2, 0.95])
  together = verdicts.compare_families([_family(*first.contrasts, *second.contrasts)],
                                       selected, 0.005)
  assert [o.comparison.level for o in together] == pytest.approx([1 - 0.05 / 3] * 3)


def test_a_check_is_held_to_the_experiments_levels_not_its_own_family():
  """A check repeats a family's primary comparison alone; tested at the level the
  experiment's full family gave it, its interval is as wide as there, where Holm over
  the check's one comparison would give the lighter 95%."""
  selected = _four_arms()
  full = _family(*(protocol.Contrast(x, 'ref') for x in 'abc'))
  main = {o.contrast.label: {'level': o.comparison.level,
                             'equivalence_level': o.comparison.equivalence_level}
          for o in verdicts.compare_families([full], selected, 0.005)}
  alone = _family(protocol.Contrast('a', 'ref'))
  [checked] = verdicts.compare_families([alone], selected, 0.005, levels=main)
  [own] = verdicts.compare_families([alone], selected, 0.005)
  assert checked.at_levels and not own.at_levels
  assert checked.comparison.level == pytest.approx(1 - 0.05 / 3)  # the full family's step
  assert own.comparison.level == pytest.approx(0.95)
  assert checked.comparison.interval[0] < own.comparison.interval[0]
  assert "the experiment's 98.33% CI" in verdicts.reading(checked, 0.005)
  assert verdicts.registered_verdicts([checked], 0.005) == {'a - ref': own.comparison.verdict}
  # a contrast the experiment never compared is tested alone at alpha, and says so
  [unknown] = verdicts.compare_families([alone], selected, 0.005, levels={})
  assert unknown.uncorrected and not unknown.at_levels and not own.uncorrected
  assert unknown.comparison.level == pytest.approx(0.95)
  assert 'uncorrected (the experiment did not compare it) 95% CI' in verdicts.reading(unknown,
                                                                                      0.005)


def test_without_a_margin_no_equivalence_is_claimed():
  arms = [protocol.Arm('ref', {}), protocol.Arm('same', {}), protocol.Arm('up', {})]
  rows = (_rows('ref', [[.8, .81, .82]], [[.8, .81, .82]], rates=(1e-3,)) +
          _rows('same', [[.8, .81, .82]], [[.8, .81, .82]], rates=(1e-3,)) +
          _rows('up', [[.8, .81, .82]], [[.81, .82, .83]], rates=(1e-3,)))
  selected = verdicts.select_rates(arms, rows)
  family = _family(protocol.Contrast('same', 'ref'), protocol.Contrast('up', 'ref'))
  same, up = verdicts.compare_families([family], selected, 0.005)
  assert same.comparison.verdict == 'equivalent within +-0.005'
  assert up.comparison.verdict == stats.DIFFERENT
  same, up = verdicts.compare_families([family], selected, None)
  assert same.comparison.verdict == stats.INCONCLUSIVE
  assert up.comparison.verdict == stats.DIFFERENT
  assert verdicts.plain_words(same, None) == ('not shown different (equivalence not assessed '
                                              'on these data)')
  assert verdicts.plain_words(up, None) == 'higher'


def test_the_plan_tunes_on_the_tuning_seeds_and_reports_on_the_others(idx_dir):
  data.load.cache_clear()
  base = protocol.base(False, **overrides(idx_dir))
  assert (base.epochs, base.patience, base.optim.schedule) == (
      protocol.MAX_EPOCHS, protocol.PATIENCE, 'constant')
  dataset = data.load(base.data)
  arms = [protocol.Arm('a', {}), protocol.Arm('b', {'model.activation': 'tanh'})]
  tuning, report = protocol.TUNING_SEEDS, protocol.REPORT_SEEDS
  assert not set(tuning) & set(report)
  plan = protocol.make_plan(arms, base, tuning, report, dataset, quick=False)
  # Before any choice: every rate of each grid, on the tuning seeds only.
  assert len(plan) == 2 * 3 * len(tuning)
  assert {p.config.seed for p in plan} == set(tuning)
  assert all((p.config.epochs, p.config.patience) == (50, 5) for p in plan)
  # A choice adds that rate on the report seeds, and nothing else.
  grids = {'a': (1e-3, 2e-3, 4e-3, 8e-3)}  # extended once past its winning edge
  chosen = {'a': 8e-3, 'b': 2e-3}
  full = protocol.make_plan(arms, base, tuning, report, dataset, False, grids, chosen)
  for label, grid in (('a', grids['a']), ('b', (1e-3, 2e-3, 4e-3))):
    mine = [p.config for p in full if p.arm == label]
    assert sorted((c.optim.learning_rate, c.seed) for c in mine if c.seed in tuning) == sorted(
        (r, s) for r in grid for s in tuning)
    assert sorted((c.optim.learning_rate, c.seed) for c in mine if c.seed not in tuning) == [
        (chosen[label], s) for s in report]
  totals = protocol.planned_total(arms, base, tuning, report, False, grids)
  assert totals == {'a': 4 * len(tuning) + len(report), 'b': 3 * len(tuning) + len(report)}
  assert sum(totals.values()) == len(full) == len({p.run_id for p in full})
  with pytest.raises(ValueError, match='overlap'):
    protocol.make_plan(arms, base, (0, 100), report, dataset, quick=False)
  # Quick mode: one epoch, no patience, two rates, its own seeds.
  quick = protocol.base(True, **overrides(idx_dir))
  assert (quick.epochs, quick.patience) == (protocol.QUICK_EPOCHS, None)
  small = protocol.make_plan(arms, quick, protocol.QUICK_TUNING_SEEDS,
                             protocol.QUICK_REPORT_SEEDS, dataset, True, chosen={'a': 1e-3})
  assert len(small) == 2 * protocol.QUICK_RATES + len(protocol.QUICK_REPORT_SEEDS)
  assert protocol.planned_total(arms, quick, protocol.QUICK_TUNING_SEEDS,
                                protocol.QUICK_REPORT_SEEDS, True) == {'a': 4, 'b': 4}


def test_the_method_states_the_budget_rule_the_runs_trained_under():
  full, quick = protocol.base(False), protocol.base(True)
  assert protocol.budget_words(full) == (
      'constant learning rate until validation accuracy has not improved for 5 epochs (at '
      'most 50); the best-on-validation model')
  assert protocol.budget_words(quick) == (
      "1 epoch(s), constant learning rate, the best-on-validation epoch's model")
  text = protocol.protocol(full)
  assert text.startswith(f'Budget: {protocol.budget_words(full)}.')
  for words in ('tuned on seeds 100, 101, 102', 'reported on seeds 0-9', 'paired by seed',
                'paired bootstrap over seeds and test images', 'paired t test',
                'Holm-corrected at family-wise alpha 0.05', 'TOST', '+-0.5 points'):
    assert words in text, words
  assert protocol.protocol(quick).startswith(
      "Budget: 1 epoch(s), constant learning rate, the best-on-validation epoch's model.")
  check = config_lib.override(full, {'patience': protocol.CHECK_PATIENCE,
                                     'epochs': protocol.CHECK_MAX_EPOCHS})
  assert 'not improved for 10 epochs (at most 100)' in protocol.protocol(check)
  unresolved = protocol.protocol(full, None)
  assert 'no equivalence test' in unresolved and 'TOST' not in unresolved
  # Other data: the same fraction of the reference's error, unless too few images.
  assert protocol.margin_for(0.1, 10_000) == pytest.approx(0.1 * protocol.RELATIVE_MARGIN)
  assert protocol.margin_for(0.001, 300) is None


def test_the_checks_write_next_to_the_experiment():
  d = protocol.CHECK_DATASET
  assert verdicts.check_workdirs('/x/results/claims', 'claims', False) == {
      'patience 10': '/x/results/claims-patience10', d: f'/x/results/claims-{d}'}
  assert verdicts.check_workdirs('/x/results/claims-quick', 'claims', True) == {
      'patience 10': '/x/results/claims-patience10-quick', d: f'/x/results/claims-{d}-quick'}


def test_verdicts_of_another_protocol_are_not_read(tmp_path):
  path = tmp_path / verdicts.VERDICTS_FILE
  assert verdicts.read_verdicts(str(tmp_path)) is None
  path.write_text(json.dumps({'a - b': {'verdict': 'different', 'estimate': 0.01}}))
  assert verdicts.read_verdicts(str(tmp_path)) is None  # the earlier flat format
  path.write_text(json.dumps({'margin': 0.005, 'comparisons': {}}))
  assert verdicts.read_verdicts(str(tmp_path)) == {'margin': 0.005, 'comparisons': {}}


def _history(val, test):
  return [{'epoch': i + 1, 'train_loss': 0.5, 'train_acc': 0.5, 'val_loss': 1 - v,
           'val_acc': v, 'test_loss': 1 - t, 'test_acc': t, 'images_per_s': 1000.0}
          for i, (v, t) in enumerate(zip(val, test))]


def test_each_run_reports_its_best_model_on_validation(idx_dir, tmp_path, monkeypatch):
  """Rows, kept parameters and extra metrics are the best epoch's model's, not the last's."""
  data.load.cache_clear()
  base = protocol.base(True, **overrides(idx_dir), epochs=3)
  dataset = data.load(base.data)
  n = len(dataset.test_images)
  # Epoch 2 is best on validation (the earliest of the tied 2 and 3); the last is worse on test.
  val, test = [.80, .90, .90], [.70, .85, .60]
  trained = []

  def fake_train_group(members, ds, **kwargs):
    for cfg in members:
      trained.append(config_lib.run_id(cfg))
      yield loop.RunResult(
          cfg, status='ok', history=_history(val, test),
          params={'w': np.full(3, 2.0, np.float32)}, model_state={},
          best={'params': {'w': np.full(3, 1.0, np.float32)}, 'model_state': {}},
          test_correct=np.arange(n) < round(0.85 * n),
          facts={'data_source': ds.source, 'data_fingerprint': ds.fingerprint})

  monkeypatch.setattr(loop, 'train_group', fake_train_group)
  plan = protocol.make_plan([protocol.Arm('a', {})], base, (100,), (0,), dataset, True,
                            chosen={'a': 1e-3})
  extra = lambda res: {'w_sum': float(np.sum(res.params['w']))}
  rows, count = training.train_plan(plan, dataset, str(tmp_path), keep_params=(0,),
                                    extra=extra, say=lambda _: None)
  assert count == len(plan) == 3 and len(trained) == 3
  for row in rows:
    assert (row['best_epoch'], row['epochs_run']) == (2, 3)
    assert (row['val_acc'], row['test_acc']) == (.90, .85)
    assert (row['last_val_acc'], row['last_test_acc']) == (.90, .60)
    assert row['w_sum'] == 3.0  # computed on the best model, not the final one (6.0)
  [seed0] = [p for p in plan if p.config.seed == 0]
  assert runs.read_params(str(tmp_path), seed0.config)['w'].tolist() == [1.0, 1.0, 1.0]
  assert runs.read_test_correct(str(tmp_path), seed0.run_id).mean() == pytest.approx(.85,
                                                                                     abs=1 / n)
  assert [float(r['test_acc']) for r in _read_rows(tmp_path)] == [.85] * 3
  # Resumed: read back from the files, reported the same way, nothing trained.
  again, count = training.train_plan(plan, dataset, str(tmp_path), keep_params=(0,),
                                     extra=extra, say=lambda _: None)
  assert count == 0 and len(trained) == 3
  keys = ('run_id', 'val_acc', 'test_acc', 'last_val_acc', 'last_test_acc', 'best_epoch',
          'w_sum', 'arm')
  assert [{k: r[k] for k in keys} for r in again] == [{k: r[k] for k in keys} for r in rows]


@pytest.mark.parametrize('name', TRAINING)
def test_the_families_name_real_arms_and_primary_contrasts(name):
  """A primary label that matches no contrast would silently fall back to the first one."""
  module = importlib.import_module(f'experiments.{name}')
  arms = [a.label for a in module.arms(False)]
  assert len(arms) == len(set(arms))
  declared = getattr(module, 'FAMILIES', ())
  assert declared, f'{name} declares no FAMILIES'
  labels = [c.label for f in declared for c in f.contrasts]
  assert len(labels) == len(set(labels))  # each comparison in one family, once
  for f in declared:
    assert f.question and f.title and f.hypothesis and f.contrasts
    assert set(f.primary) <= {c.label for c in f.contrasts}, f.question
    for c in f.contrasts:
      assert c.arm in arms and c.reference in arms, c
  assert [c.label for c in protocol.contrasts_of(module, arms)] == labels
  assert protocol.primary_contrasts(module)
  assert not hasattr(module, 'HEADLINE')


def test_grids():
  base = protocol.base(quick=False)
  assert protocol.Arm('adam', {}).grid(base, quick=False) == (1e-3, 2e-3, 4e-3)
  assert protocol.Arm('adam', {}).grid(base, quick=True) == (1e-3, 2e-3)
  sgd = protocol.Arm('sgd', {'optim.optimizer': 'sgd'}, rates=(0.9, 0.3, 2.7))
  assert sgd.grid(base, quick=False) == (0.3, 0.9, 2.7)
  with pytest.raises(ValueError, match='distinct learning rates'):
    protocol.Arm('x', {}, rates=(0.1, 0.1)).grid(base, quick=False)
  shifted = evaluation.shift_images(np.arange(9).reshape(1, 3, 3, 1), 1, 0)
  assert shifted[0, :, :, 0].tolist() == [[0, 0, 0], [0, 1, 2], [3, 4, 5]]


def _expected_hold(here, there):
  if there['verdict'] != here['verdict']:
    return 'does not hold'
  if here['verdict'].startswith(stats.DIFFERENT) and (
      (there['estimate'] > 0) != (here['estimate'] > 0)):
    return 'does not hold (opposite sign)'
  return 'holds'


@requires(*REPORT_PACKAGES)
def test_the_checks_train_the_primary_arms_and_the_main_report_compares_them(idx_dir, tmp_path):
  """The budget check (patience 10) and the other-data check train only the primary
  comparisons' arms, next to the experiment (`check_workdirs`); the main report then
  says for each primary comparison whether its verdict holds there, and how the effect
  differs between the datasets. (The other-data check runs on the tests' data here:
  what is tested is the machinery, not the dataset.)"""
  data.load.cache_clear()
  module = importlib.import_module('experiments.learned_kernels')
  main = tmp_path / f'{module.NAME}-quick'  # where `--quick` writes it
  checks = verdicts.check_workdirs(str(main), module.NAME, True)
  budget_dir, other_dir = checks['patience 10'], checks[protocol.CHECK_DATASET]
  assert os.path.basename(budget_dir) == f'{module.NAME}-patience10-quick'
  [primary] = protocol.primary_contrasts(module)
  wanted = {primary.arm, primary.reference}
  assert len(wanted) < len(module.arms(True))  # the check trains fewer arms
  # A check tests at the experiment's own levels, so it waits for the experiment.
  with pytest.raises(ValueError, match=r'finish the experiment first \(`python -m experiments '
                     r'learned_kernels --quick`\)'):
    runner.run(module, budget_dir, quick=True, data_overrides=overrides(idx_dir),
               patience=protocol.CHECK_PATIENCE, check=True, say=lambda _: None)
  assert not os.path.exists(budget_dir)  # refused before anything trained
  runner.run(module, str(main), quick=True, data_overrides=overrides(idx_dir),
             say=lambda _: None)
  levels = verdicts.read_verdicts(str(main))['comparisons'][primary.label]
  # The budget check: patience 10, and in quick mode a cap of 2 epochs.
  status = runner.run(module, budget_dir, quick=True, data_overrides=overrides(idx_dir),
                      patience=protocol.CHECK_PATIENCE, check=True, say=lambda _: None)
  assert status.complete
  text = (tmp_path / os.path.basename(budget_dir) / 'report.md').read_text()
  assert '> CHECK: only the arms of the primary comparisons' in text
  assert '> QUICK MODE: 2 epoch(s) on' in text
  assert ('Budget: constant learning rate until validation accuracy has not improved for 10 '
          'epochs (at most 2); the best-on-validation model.') in text
  assert "the last epoch's model" not in text and '## Checks' not in text
  rows = _read_rows(budget_dir)
  assert {r['arm'] for r in rows} == wanted
  assert {r['epochs_run'] for r in rows} == {'2'}  # the cap, before 10 epochs without progress
  _assert_rows_report_the_best_model(budget_dir, rows)
  stopped = _section(text, 'Budget rule: where each run stopped')
  assert 'had not improved for 10 epochs, at most 2' in stopped
  assert 'Reached the cap before the plateau rule stopped them' in stopped
  there_budget = verdicts.read_verdicts(budget_dir)
  assert set(there_budget['comparisons']) == {primary.label}
  # ... at the experiment's levels (post hoc amendment), with the registered verdict beside.
  checked = there_budget['comparisons'][primary.label]
  assert checked['level'] == levels['level']
  assert checked['equivalence_level'] == pytest.approx(levels['equivalence_level'], nan_ok=True)
  assert checked['verdict_as_registered'] in text
  assert "the experiment's own levels (post hoc amendment" in text
  # The other-data check: only the primary arms again.
  status = runner.run(module, other_dir, quick=True, data_overrides=overrides(idx_dir),
                      check=True, say=lambda _: None)
  assert status.complete and {r['arm'] for r in _read_rows(other_dir)} == wanted
  there_other = verdicts.read_verdicts(other_dir)
  # The experiment itself: its report compares the checks' verdicts with its own.
  status = runner.run(module, str(main), quick=True, data_overrides=overrides(idx_dir),
                      say=lambda _: None)
  here = verdicts.read_verdicts(str(main))['comparisons'][primary.label]
  section = _section(status.text, 'Checks')
  assert 'not run yet' not in section
  table = [l for l in section.splitlines() if l.startswith('| ') and '---' not in l]
  assert table[0] == ('| comparison | verdict here | patience 10 | '
                      f'{protocol.CHECK_DATASET} | effect here - effect on '
                      f'{protocol.CHECK_DATASET} |')
  [row] = table[1:]  # the primary comparison only
  cells = row[2:-2].split(' | ')
  assert cells[:2] == [primary.label, here['verdict']]
  for cell, there in ((cells[2], there_budget), (cells[3], there_other)):
    theirs = there['comparisons'][primary.label]
    assert cell == (f"{_expected_hold(here, theirs)}: {theirs['verdict']} "
                    f"({verdicts.points(theirs['estimate'])} points)")
  assert re.fullmatch(r'[+-]\d+\.\d\d \([+-]\d+\.\d\d to [+-]\d+\.\d\d\): '
                      r'(differs|not shown to differ)', cells[4]), cells[4]


def test_a_check_of_an_experiment_without_comparisons_is_refused(tmp_path):
  module = importlib.import_module('experiments.shapes')
  with pytest.raises(ValueError, match='declares no comparisons to check'):
    runner.run(module, str(tmp_path), quick=True, patience=protocol.CHECK_PATIENCE, check=True)


def test_an_unknown_experiment_names_the_choices():
  proc = subprocess.run([sys.executable, '-m', 'experiments', 'channel_shrink'],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert proc.returncode == 2
  assert 'NAME is one of shapes, channel_growth' in proc.stderr
  assert "got ['channel_shrink']" in proc.stderr
  assert '[--patience=N]' in proc.stderr and '[--preregister]' in proc.stderr


def test_the_command_line_preregisters_and_names_the_check_workdirs(tmp_path):
  """--preregister writes NAME.md (here into a temporary directory, never the project's)
  and trains nothing; a check's default workdir is NAME-patience10 or NAME-DATASET."""
  script = textwrap.dedent(f'''
      import sys
      from absl import app
      from experiments import preregistration
      preregistration.DIRECTORY = {str(tmp_path)!r}
      from experiments import __main__ as main
      from lenet_jax import cli
      for args in (('claims', 10, None, False), ('claims', None, 'animal_mnist', True),
                   ('claims', None, None, False)):
        print('workdir', main.default_workdir(*args))
      sys.argv = ['experiments', *sys.argv[1:]]
      app.run(main.main, flags_parser=cli.parse_flags)
      ''')
  run = lambda *args: subprocess.run([sys.executable, '-c', script, *args], capture_output=True,
                                     text=True, cwd=ROOT, timeout=120)
  proc = run('learned_kernels', '--preregister')
  assert proc.returncode == 0, proc.stderr
  results = os.path.join(ROOT, 'experiments', 'results')
  assert [l.split(' ', 1)[1] for l in proc.stdout.splitlines() if l.startswith('workdir ')] == [
      os.path.join(results, 'claims-patience10'),
      os.path.join(results, 'claims-animal_mnist-quick'), os.path.join(results, 'claims')]
  written = tmp_path / 'learned_kernels.md'
  assert f'wrote {written}; review it and commit it before the first run' in proc.stdout
  module = importlib.import_module('experiments.learned_kernels')
  assert written.read_text() == preregistration.text(module)
  assert os.listdir(tmp_path) == ['learned_kernels.md']  # nothing trained, no workdir
  proc = run('shapes', '--preregister')
  assert proc.returncode == 2 and 'shapes trains nothing' in proc.stderr
  proc = run('learned_kernels', '--patience=0')
  assert proc.returncode == 2 and '--patience=0 must be >= 1' in proc.stderr


def test_the_command_line_is_quiet_and_stops_cleanly_on_sigterm(tmp_path):
  """No orbax INFO pages; SIGTERM (a scheduler's stop) ends it as Ctrl-C does: one line, 130,
  with the runs finished so far recorded and packed and progress.md written, as at a
  --max_minutes stop, so the workdir can be committed as it is."""
  workdir = tmp_path / 'w'
  proc = subprocess.Popen([sys.executable, '-u', '-m', 'experiments', 'learned_kernels',
                           '--quick', f'--workdir={workdir}'], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  seen = ['']
  while not seen[-1].startswith('training '):  # the first group has begun its epochs
    seen.append(proc.stdout.readline())
    assert seen[-1] or proc.poll() is None
  assert any('runs (0 already finished' in line for line in seen)
  seen.append(proc.stdout.readline())
  while not (seen[-1].startswith('training ') and any(l.startswith('[1/') for l in seen)):
    seen.append(proc.stdout.readline())  # ... until it has finished and the second begun
    assert seen[-1] or proc.poll() is None
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err
  # The epoch in progress was finished and its group checkpointed.
  assert [p for p in workdir.glob('groups/*/*') if p.name.isdigit()]
  assert 'Traceback' not in err and 'checkpoint_manager' not in err, err
  assert err.strip().splitlines()[-1].startswith(f'interrupted; every finished run and epoch '
                                                 f'checkpoint is in {workdir}')
  first = next(line for line in seen if line.startswith('[1/'))  # '[1/3] arm: 4 runs ...'
  finished = int(first.split(': ', 1)[1].split(' runs', 1)[0])
  assert len(runs.run_ids(workdir)) == finished and not list(workdir.glob('runs/*'))
  assert f'{finished} of ' in (workdir / 'progress.md').read_text()


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


# ----------------------------------------------------------------------------
# Pre-registration (experiments/preregistration.py)


@pytest.mark.parametrize('name', TRAINING)
def test_a_preregistration_states_every_family_arm_and_the_protocol(name):
  module = importlib.import_module(f'experiments.{name}')
  text = preregistration.text(module)
  assert text == preregistration.text(module)  # a function of the module alone
  assert text.startswith(f'# Pre-registration: {name}\n') and module.QUESTION in text
  for arm in module.arms(False):
    assert f'- `{arm.label}`: ' in text
  registered = preregistration.registered_part(text)
  later = text[len(registered):]  # the post hoc section, if any
  for f in protocol.families_of(module):
    heading = f'### {f.question}: {f.title}\n\nHypothesis: {f.hypothesis}\n'
    if f.post_hoc:  # below the registered part, saying when and why it was added
      assert heading in later and f'Post hoc: {f.post_hoc}' in later
    else:
      assert heading in registered
    assert f'Comparisons ({len(f.contrasts)}, one Holm family):' in text
    primary = {c.label for c in f.primary_contrasts()}  # a post hoc family's too
    for c in f.contrasts:
      assert (f'- **primary** `{c.label}`' if c.label in primary else f'- `{c.label}`') in text
  for words in (f'tuned on seeds {list(protocol.TUNING_SEEDS)}', 'reported on seeds 0-9',
                'has not improved for 5 epochs (at most 50); the best-on-validation model',
                'family-wise alpha 0.05', '+-0.5 points', 'paired bootstrap',
                f'patience {protocol.CHECK_PATIENCE}, at most {protocol.CHECK_MAX_EPOCHS} epochs',
                f'other data: {protocol.CHECK_DATASET}'):
    assert words in text, words
  # Post hoc: the families added later, and the amendment of how checks are tested.
  assert later.lstrip().startswith(preregistration.POST_HOC_HEADING)
  assert f'Checks: {protocol.CHECK_LEVELS_AMENDMENT}' in later
  assert 'Amended post hoc (2026-12-05)' not in registered


@pytest.mark.parametrize('name', TRAINING)
def test_the_committed_preregistration_is_what_the_module_states(name):
  """Else the experiment's full-mode runs refuse to start (check_and_record)."""
  module = importlib.import_module(f'experiments.{name}')
  path = os.path.join(ROOT, 'experiments', 'preregistration', f'{name}.md')
  assert preregistration.path(name) == path and os.path.exists(path), (
      f'write it with `python -m experiments {name} --preregister` and commit it')
  with open(path) as f:
    assert preregistration.registered_part(f.read()) == preregistration.registered_part(
        preregistration.text(module))


def _module_like(module, families):
  """`module` with other FAMILIES (what a later edit of it would be)."""
  return types.SimpleNamespace(NAME=module.NAME, TITLE=module.TITLE, QUESTION=module.QUESTION,
                               TRAINS=True, REFERENCE=module.REFERENCE, arms=module.arms,
                               FAMILIES=tuple(families))


def _variants(post_hoc_contrast=None):
  """learned_kernels; it with a family added post hoc (by default on arms its checks
  train already); it with a declared family's hypothesis changed."""
  module = importlib.import_module('experiments.learned_kernels')
  contrast = post_hoc_contrast or protocol.Contrast(
      'conv1 frozen at random init', 'all layers learned', 'val_acc')
  later = protocol.Family('Q7b', 'A later question', 'Expected lower.', (contrast,),
                          post_hoc='added after the first results, to locate the loss')
  post_hoc = _module_like(module, module.FAMILIES + (later,))
  [family] = module.FAMILIES
  edited = _module_like(module, [dataclasses.replace(family, hypothesis='Something else.')])
  return module, post_hoc, edited


def test_a_family_added_post_hoc_leaves_the_registered_part_alone():
  module, post_hoc, edited = _variants()
  text, later = preregistration.text(module), preregistration.text(post_hoc)
  assert later != text
  head, tail = later.split(preregistration.POST_HOC_HEADING)
  assert '### Q7b: A later question' in tail and '### Q7b' not in head
  assert 'Post hoc: added after the first results, to locate the loss' in tail
  assert preregistration.registered_part(later) == preregistration.registered_part(text)
  assert preregistration.digest(later) == preregistration.digest(text)
  # A change to a declared family is a change of the registration.
  assert preregistration.digest(preregistration.text(edited)) != preregistration.digest(text)
  # Reports label a post hoc family as such, beside its question.
  [_, f] = protocol.families_of(post_hoc)
  heading = writeup._family_heading(f)
  assert heading.startswith('**Q7b: A later question** *Post hoc*: added after the first')
  assert 'Pre-registered hypothesis: Expected lower.' in heading


def test_a_family_added_post_hoc_on_other_arms_leaves_the_registered_part_alone():
  module, post_hoc, _ = _variants(protocol.Contrast('both convs frozen at random init',
                                                    'conv1 frozen at random init'))
  assert preregistration.digest(preregistration.text(post_hoc)) == preregistration.digest(
      preregistration.text(module))


@pytest.fixture
def git_root(tmp_path, monkeypatch):
  """preregistration.ROOT and DIRECTORY in a new git repository (tmp/repo/experiments)."""
  if shutil.which('git') is None:
    pytest.skip('git is not installed')
  for name in ('GIT_DIR', 'GIT_WORK_TREE', 'GIT_INDEX_FILE', 'GIT_OBJECT_DIRECTORY'):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('GIT_CEILING_DIRECTORIES', str(tmp_path))  # never a repository above
  repo = tmp_path / 'repo'
  root = repo / 'experiments'
  root.mkdir(parents=True)
  subprocess.run(['git', 'init', '-q', str(repo)], check=True)
  monkeypatch.setattr(preregistration, 'ROOT', str(root))
  monkeypatch.setattr(preregistration, 'DIRECTORY', str(root / 'preregistration'))
  return repo


def _commit(repo, message='pre-registration'):
  git = ['git', '-C', str(repo), '-c', 'user.name=t', '-c', 'user.email=t@example.com',
         '-c', 'commit.gpgsign=false']
  subprocess.run(git + ['add', '-A'], check=True)
  subprocess.run(git + ['commit', '-q', '-m', message], check=True)
  return subprocess.run(git + ['rev-parse', 'HEAD'], check=True, capture_output=True,
                        text=True).stdout.strip()


def test_a_run_starts_only_under_its_committed_preregistration(git_root, tmp_path):
  module, post_hoc, edited = _variants()
  first, second = str(tmp_path / 'w1'), str(tmp_path / 'w2')
  os.makedirs(first), os.makedirs(second)
  check = preregistration.check_and_record
  with pytest.raises(ValueError, match='has no pre-registration'):
    check(module, first)
  target = preregistration.write(module)
  assert target == str(git_root / 'experiments' / 'preregistration' / 'learned_kernels.md')
  with pytest.raises(ValueError, match='is not committed'):  # new, untracked
    check(module, first)
  commit = _commit(git_root)
  record = check(module, first)
  assert record['file'] == 'experiments/preregistration/learned_kernels.md'
  assert record['sha256'] == preregistration.digest(preregistration.text(module))
  assert record['commit'].split()[0] == commit
  assert preregistration.recorded(first) == record
  assert check(module, first) == record  # a later invocation under the same one
  # The file edited, and not as the module states it: refused.
  with open(target) as f:
    document = f.read()
  with open(target, 'w') as f:  # in the registered part (not the post hoc section)
    f.write(document.replace('## Arms\n\n', '## Arms\n\n- one more arm\n'))
  with pytest.raises(ValueError, match='differs from what experiments/learned_kernels.py'):
    check(module, first)
  # As the module states it, but the committed file is another: refused until committed.
  preregistration.write(edited)
  _commit(git_root, 'a hypothesis changed')
  preregistration.write(module)
  with pytest.raises(ValueError, match='is not committed'):
    check(module, first)
  # Committed with a family added post hoc: the workdir's registration still holds.
  preregistration.write(post_hoc)
  _commit(git_root, 'post hoc')
  assert check(post_hoc, first) == record
  assert check(module, first) == record
  # A changed registration does not answer for the runs started under the first one ...
  preregistration.write(edited)
  changed = _commit(git_root, 'a hypothesis changed again')
  with pytest.raises(ValueError, match='was started under another pre-registration'):
    check(edited, first)
  assert preregistration.recorded(first) == record  # left as it was
  # ... but a new workdir starts under it.
  assert check(edited, second)['commit'].split()[0] == changed
  assert check(edited, second)['sha256'] != record['sha256']


def test_outside_a_git_checkout_nothing_counts_as_committed(tmp_path, monkeypatch):
  monkeypatch.setenv('GIT_CEILING_DIRECTORIES', str(tmp_path))
  root = tmp_path / 'experiments'
  monkeypatch.setattr(preregistration, 'ROOT', str(root))
  monkeypatch.setattr(preregistration, 'DIRECTORY', str(root / 'preregistration'))
  module = importlib.import_module('experiments.learned_kernels')
  target = preregistration.write(module)
  assert preregistration.committed_in(target) is None
  with pytest.raises(ValueError, match='not a git checkout'):
    preregistration.check_and_record(module, str(tmp_path))


def test_full_mode_refuses_to_start_without_its_preregistration(idx_dir, tmp_path, monkeypatch):
  """Checked before any data is loaded or run trained: the study, and its checks."""
  monkeypatch.setattr(preregistration, 'DIRECTORY', str(tmp_path / 'none'))
  module = importlib.import_module('experiments.learned_kernels')
  os.makedirs(tmp_path / 'learned_kernels')  # the experiment a check reads its levels from
  (tmp_path / 'learned_kernels' / verdicts.VERDICTS_FILE).write_text('{"comparisons": {}}')
  for kwargs in ({}, {'patience': protocol.CHECK_PATIENCE, 'check': True}):
    workdir = tmp_path / f'w{len(kwargs)}'
    with pytest.raises(ValueError, match='learned_kernels has no pre-registration'):
      runner.run(module, str(workdir), quick=False, data_overrides=overrides(idx_dir),
                 say=lambda _: None, **kwargs)
    assert os.listdir(workdir) == []
  # One that differs from the module is refused too.
  os.makedirs(tmp_path / 'none')
  (tmp_path / 'none' / 'learned_kernels.md').write_text(
      preregistration.text(module).replace('Hypothesis: No:', 'Hypothesis: Yes:'))
  with pytest.raises(ValueError, match='differs from what'):
    runner.run(module, str(tmp_path / 'w'), quick=False, data_overrides=overrides(idx_dir),
               say=lambda _: None)


def test_the_report_names_the_preregistration_its_runs_started_under():
  record = {'file': 'experiments/preregistration/claims.md', 'sha256': 'ab' * 32,
            'commit': '0123abc 2026-12-05'}
  text = writeup.registration_text(types.SimpleNamespace(registration=record))
  assert text.startswith('**Pre-registered** in `experiments/preregistration/claims.md` '
                         f'(sha256 {"ab" * 6}), committed in 0123abc 2026-12-05')
  assert writeup.registration_text(types.SimpleNamespace(registration=None)).startswith(
      'Not pre-registered')


def test_the_study_command_runs_experiments_then_checks_and_stops_where_one_is_partial():
  """`python -m experiments study`: every experiment, then its budget checks, then its
  other-data checks, each given what is left of --max_minutes; a partial one ends it."""
  script = textwrap.dedent('''
      import sys
      from absl import app
      from experiments import __main__ as main
      from experiments import runner
      from lenet_jax import cli
      main.STUDY = ('learned_kernels', 'even_kernels')
      partial = sys.argv.pop(1)
      def fake(name, patience, dataset, max_minutes, command):
        print('step', name, patience, dataset, max_minutes is not None)
        return runner.RunStatus('', complete=(name, patience, dataset) != eval(partial),
                                finished=1, total=2)
      main._run = fake
      sys.argv = ['experiments', *sys.argv[1:]]
      app.run(main.main, flags_parser=cli.parse_flags)
      ''')
  run = lambda *args: subprocess.run([sys.executable, '-c', script, *args], capture_output=True,
                                     text=True, cwd=ROOT, timeout=120)
  proc = run('None', 'study', '--max_minutes=60')
  assert proc.returncode == 0, proc.stderr
  steps = [l.split()[1:] for l in proc.stdout.splitlines() if l.startswith('step ')]
  assert steps == [['learned_kernels', 'None', 'None', 'True'],
                   ['even_kernels', 'None', 'None', 'True'],
                   ['learned_kernels', '10', 'None', 'True'],
                   ['even_kernels', '10', 'None', 'True'],
                   ['learned_kernels', 'None', 'animal_mnist', 'True'],
                   ['even_kernels', 'None', 'animal_mnist', 'True'],
                   ['learned_kernels', 'None', 'None', 'False'],  # reported with their checks
                   ['even_kernels', 'None', 'None', 'False']]
  assert 'every experiment and check has finished' in proc.stdout
  proc = run("('even_kernels', None, None)", 'study')  # stopped part way: no checks yet
  assert proc.returncode == 0, proc.stderr
  assert [l.split()[1] for l in proc.stdout.splitlines() if l.startswith('step ')] == [
      'learned_kernels', 'even_kernels']
  proc = run('None', 'study', '--max_minutes=0')
  assert proc.returncode == 0 and 'out of time before learned_kernels' in proc.stdout
  proc = run('None', 'study', '--patience=10')
  assert proc.returncode == 2 and 'drop --workdir, --patience' in proc.stderr
