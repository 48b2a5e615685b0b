"""The README's answers table is generated from the reports, and its counts are computed."""
import json
import os

from experiments import answers
from experiments import preregistration
from experiments import verdicts


def test_the_readme_table_is_what_the_generator_writes():
  assert answers.main(['--check']) == 0, 'run python -m experiments.answers and commit README.md'


def _verdicts(path, comparisons, margin=0.005, quick=False, patience=5,
              dataset='fashion_mnist'):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, verdicts.VERDICTS_FILE), 'w') as f:
    json.dump({'margin': margin, 'dataset': dataset, 'patience': patience, 'quick': quick,
               'registration': 'ab' * 32, 'comparisons': comparisons}, f)


def _v(verdict, estimate, lo, hi):
  return {'verdict': verdict, 'estimate': estimate, 'interval': [lo, hi], 'level': 0.975,
          'test': 'BootstrapTest', 'family': 'Q7', 'seeds': 10, 'runs': []}


def test_rows_show_the_primary_verdicts_and_count_every_check(tmp_path, monkeypatch):
  monkeypatch.setattr(answers, 'RESULTS', str(tmp_path))
  label = 'conv1 frozen at random init - all layers learned'
  _verdicts(tmp_path / 'learned_kernels', {label: _v('different', -0.007, -0.010, -0.004)})
  # holds under the longer plateau rule; the other data says otherwise
  _verdicts(tmp_path / 'learned_kernels-patience10', {label: _v('different', -0.006, -0.01, -0.002)},
            patience=10)
  _verdicts(tmp_path / 'learned_kernels-animal_mnist', {label: _v('inconclusive', -0.002, -0.01, 0.006)},
            margin=None, dataset='animal_mnist')
  rows, counts, _ = answers.rows_and_counts()
  row = next(r for r in rows if r[0] == 'Q7')
  assert row[2] == 'conv1 frozen at random init **worse** than all layers learned'
  assert row[3] == '-0.70 [-1.00, -0.40]'
  assert row[4] == 'patience 10: holds; animal_mnist: does not hold (inconclusive there)'
  assert counts['primary'] == 1
  assert counts['checked:patience 10'] == counts['held:patience 10'] == 1
  assert counts['checked:animal_mnist'] == 1 and counts['held:animal_mnist'] == 0
  assert counts['checked_all'] == 1 and counts['hold_all'] == 0
  # an experiment without verdicts under this protocol claims nothing
  q2 = next(r for r in rows if r[0] == 'Q2')
  assert q2[2].startswith('Pending') and q2[3] == '-'
  text = answers.table()
  assert '1 primary verdicts' in text and '0 of 1 hold in every check' in text
  assert 'Every verdict above was measured on fashion_mnist, patience 5' in text


def test_a_difference_of_opposite_sign_does_not_hold(tmp_path, monkeypatch):
  monkeypatch.setattr(answers, 'RESULTS', str(tmp_path))
  label = 'conv1 frozen at random init - all layers learned'
  _verdicts(tmp_path / 'learned_kernels', {label: _v('different', -0.007, -0.010, -0.004)})
  _verdicts(tmp_path / 'learned_kernels-patience10', {label: _v('different', 0.006, 0.002, 0.01)})
  rows, counts, _ = answers.rows_and_counts()
  assert counts['held:patience 10'] == 0
  assert 'animal_mnist: not run' in next(r for r in rows if r[0] == 'Q7')[4]


def test_a_check_still_running_says_in_progress_and_is_not_counted(tmp_path, monkeypatch):
  monkeypatch.setattr(answers, 'RESULTS', str(tmp_path))
  label = 'conv1 frozen at random init - all layers learned'
  _verdicts(tmp_path / 'learned_kernels', {label: _v('different', -0.007, -0.010, -0.004)})
  started = tmp_path / 'learned_kernels-animal_mnist'
  started.mkdir()
  (started / preregistration.RECORD_FILE).write_text('{}')  # written before any training
  rows, counts, _ = answers.rows_and_counts()
  cell = next(r for r in rows if r[0] == 'Q7')[4]
  assert cell == 'patience 10: not run; animal_mnist: in progress'
  assert counts['checked:animal_mnist'] == 0 and counts['checked_all'] == 0


def test_equivalence_holds_across_margins_and_is_not_assessable_without_one(tmp_path, monkeypatch):
  """A check's verdict is compared by category and sign, never by its margin's digits; an
  equivalence the check's data cannot test is 'not assessable', not 'does not hold'."""
  monkeypatch.setattr(answers, 'RESULTS', str(tmp_path))
  label = 'conv1 frozen at random init - all layers learned'
  _verdicts(tmp_path / 'learned_kernels', {label: _v('equivalent within +-0.005', 0.0, -0.003, 0.003)})
  _verdicts(tmp_path / 'learned_kernels-patience10',
            {label: _v('equivalent within +-0.005', 0.001, -0.002, 0.004)}, patience=10)
  _verdicts(tmp_path / 'learned_kernels-animal_mnist', {label: _v('inconclusive', 0.0, -0.01, 0.01)},
            margin=None, dataset='animal_mnist')
  rows, counts, _ = answers.rows_and_counts()
  row = next(r for r in rows if r[0] == 'Q7')
  assert row[2] == 'conv1 frozen at random init **equivalent** to all layers learned (+-0.5 pt)'
  assert 'patience 10: holds' in row[4] and 'animal_mnist: not assessable' in row[4]
  assert counts['held:patience 10'] == 1 and counts['checked:animal_mnist'] == 0
  _verdicts(tmp_path / 'learned_kernels-animal_mnist',
            {label: _v('equivalent within +-0.0108', 0.001, -0.004, 0.006)}, margin=0.0108,
            dataset='animal_mnist')
  _, counts, _ = answers.rows_and_counts()
  assert counts['held:animal_mnist'] == 1 and counts['hold_all'] == 1


def test_a_quick_or_unregistered_report_answers_nothing(tmp_path, monkeypatch):
  monkeypatch.setattr(answers, 'RESULTS', str(tmp_path))
  label = 'conv1 frozen at random init - all layers learned'
  _verdicts(tmp_path / 'learned_kernels', {label: _v('different', -0.007, -0.010, -0.004)},
            quick=True)
  rows, counts, _ = answers.rows_and_counts()
  assert next(r for r in rows if r[0] == 'Q7')[2].startswith('Pending')
  assert counts['primary'] == 0


def test_a_post_hoc_family_is_shown_labelled_but_never_checked_nor_counted(tmp_path, monkeypatch):
  monkeypatch.setattr(answers, 'RESULTS', str(tmp_path))
  primary = 'two 3x3 per block - one 5x5 per block (note)'
  later = 'gap head, one 3x3 per block - gap head, one 5x5 per block'
  _verdicts(tmp_path / 'small_kernels', {primary: _v('different', 0.0065, 0.002, 0.011),
                                         later: _v('different', -0.021, -0.03, -0.013)})
  _verdicts(tmp_path / 'small_kernels-patience10', {primary: _v('different', 0.006, 0.001, 0.01)},
            patience=10)
  rows, counts, _ = answers.rows_and_counts()
  q5b = next(r for r in rows if r[0] == 'Q5b')
  assert '*(post hoc)*' in q5b[1] and '**worse**' in q5b[2]
  assert q5b[4] == 'not checked (post hoc)'
  q5 = next(r for r in rows if r[0] == 'Q5')
  assert 'patience 10: holds' in q5[4]
  assert counts['primary'] == 1  # Q5's compared primary; Q5b's is not counted


def test_each_verdict_reads_as_a_few_words_and_the_data_is_named_where_it_differs(
    tmp_path, monkeypatch):
  """better / worse / equivalent within the margin / inconclusive, one comparison a line;
  a row measured on other data than the rest names its data in its cells."""
  monkeypatch.setattr(answers, 'RESULTS', str(tmp_path))
  small, minus, plus = 'two 3x3 per block - one 5x5 per block (note)', (
      'two 3x3 per block - two 3x3 per block, no activation between'), '2x2 same - 3x3 same'
  _verdicts(tmp_path / 'small_kernels', {small: _v('different, but within +-0.005', 0.003, 0.001, 0.004),
                                         minus: _v('inconclusive', 0.002, -0.006, 0.01)})
  _verdicts(tmp_path / 'even_kernels', {plus: _v('different', 0.007, 0.004, 0.01)},
            dataset='animal_mnist')
  rows, _, measured = answers.rows_and_counts()
  q5 = next(r for r in rows if r[0] == 'Q5')
  assert q5[2].split(answers.LINE) == [
      'two 3x3 per block **better** than one 5x5 per block (note), by less than 0.5 pt',
      'two 3x3 per block vs two 3x3 per block, no activation between: **inconclusive**']
  assert q5[3].split(answers.LINE)[0] == '+0.30 [+0.10, +0.40]'
  assert measured == {'fashion_mnist, patience 5', 'animal_mnist, patience 5'}
  assert q5[4].startswith('fashion_mnist, patience 5; patience 10: not run')
  assert next(r for r in rows if r[0] == 'Q6')[2].startswith('2x2 same **better** than 3x3 same')
  assert 'Every verdict above' not in answers.table()
