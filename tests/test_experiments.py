"""Every experiment's quick mode runs end to end and writes its report and plots.

Quick mode on the tests' own small IDX dataset: the numbers mean nothing (the
report says so); what is tested is that each experiment trains its arms,
computes its statistics and writes a complete report.
"""
import csv
import importlib
import os
import re

import pytest

from experiments import EXPERIMENTS, common
from lenet_jax import data


@pytest.mark.parametrize('name', EXPERIMENTS)
def test_quick_mode_writes_a_report(name, idx_dir, tmp_path):
  data.load.cache_clear()
  module = importlib.import_module(f'experiments.{name}')
  workdir = tmp_path / name
  text = common.run(module, str(workdir), quick=True, data_overrides={
      'data.dataset': 'mnist', 'data.idx_dir': str(idx_dir), 'data.validation_size': 200})
  assert (workdir / 'report.md').read_text() == text
  assert text.startswith(f'# {module.TITLE}')
  for heading in ('**Question.**', '**Method.**', '## Answer', '## Reproduce'):
    assert heading in text
  for line in text.splitlines():  # every plot the report shows was written
    if line.startswith('!['):
      assert (workdir / line[line.index('(') + 1:-1]).is_file()
  if module.TRAINS:
    assert 'QUICK MODE' in text and f'idx:{idx_dir}' in text
    with open(workdir / 'results.csv') as f:
      rows = list(csv.DictReader(f))
    arms = min(len(module.arms(True)), common.QUICK_ARMS)
    assert len(rows) == arms * len(common.QUICK_SEEDS)
    assert all(r['status'] == 'ok' for r in rows)
    assert '95% CI' in text and '+-' in text
    assert len(os.listdir(workdir / 'runs')) == len(rows)


def test_a_rerun_takes_finished_runs_and_their_parameters_from_the_workdir(idx_dir, tmp_path,
                                                                          capsys):
  """learned_kernels analyses final parameters: a resumed run must bring them back."""
  data.load.cache_clear()
  module = importlib.import_module('experiments.learned_kernels')
  overrides = {'data.dataset': 'mnist', 'data.idx_dir': str(idx_dir),
               'data.validation_size': 200}
  workdir = tmp_path / 'learned_kernels'
  first = common.run(module, str(workdir), quick=True, data_overrides=overrides)
  runs = len((workdir / 'results.jsonl').read_text().splitlines())
  # A run whose parameters were never saved (killed in between) is trained again.
  forgotten = sorted((workdir / 'runs').glob(f'*/{common.PARAMS_FILE}'))[0]
  forgotten.unlink()
  capsys.readouterr()
  second = common.run(module, str(workdir), quick=True, data_overrides=overrides)
  assert f'{runs - 1} runs already in' in capsys.readouterr().out
  assert forgotten.is_file()
  def without_timings(text):  # the run time and the img/s cell before 'ok/runs'
    text = re.sub(r'\| [\d,]+ \| (\d+/\d+) \|', r'| - | \1 |', text)
    return [line for line in text.splitlines() if not line.startswith('Ran in')]
  assert without_timings(second) == without_timings(first)


def test_statistics_helpers():
  assert common.difference([1, 2, 3], [1, 2, 3])['diff'] == 0
  d = common.difference([0.90, 0.91, 0.92], [0.80, 0.81, 0.82])
  assert d['lo'] > 0 and abs(d['diff'] - 0.10) < 1e-9
  assert 'higher test accuracy' in common.verdict('a', [0.90, 0.91, 0.92], 'b',
                                                  [0.80, 0.81, 0.82])
  assert 'no detectable difference' in common.verdict('a', [0.80, 0.90, 0.85], 'b',
                                                      [0.82, 0.88, 0.84])
  shifted = common.shift_images(__import__('numpy').arange(9).reshape(1, 3, 3, 1), 1, 0)
  assert shifted[0, :, :, 0].tolist() == [[0, 0, 0], [0, 1, 2], [3, 4, 5]]


def test_an_unknown_experiment_names_the_choices():
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, '-m', 'experiments', 'channel_shrink'],
                        capture_output=True, text=True, cwd=root, timeout=120)
  assert proc.returncode == 2
  assert "NAME is one of shapes, channel_growth" in proc.stderr
  assert "got ['channel_shrink']" in proc.stderr
