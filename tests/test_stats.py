"""The statistics against textbook values, and Holm, TOST and the verdicts' consistency."""
import math
import os
import random
import subprocess
import sys

import pytest

from conftest import requires
from lenet_jax import stats

# Quantiles and tail probabilities come from scipy (the `stats` extra).
SCIPY = requires('scipy')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Student's sleep data (Cushny and Peebles 1905), R's `sleep`: extra hours of
# sleep of 10 patients under drug 1 and drug 2; row i is the same patient.
DRUG1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
DRUG2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


@SCIPY
def test_t95_is_the_student_quantile():
  assert stats.t95(1) == pytest.approx(12.7062, abs=1e-4)
  assert stats.t95(9) == pytest.approx(2.2622, abs=1e-4)
  assert stats.t95(20) == pytest.approx(2.0860, abs=1e-4)  # printed tables
  assert math.isnan(stats.t95(0))


@SCIPY
def test_summarise_and_format_over_seeds():
  s = stats.summarise([1.0, 2.0, 3.0, None, math.nan])
  assert s['n'] == 3 and s['mean'] == 2.0 and s['std'] == 1.0
  assert s['ci95'] == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
  assert stats.format_mean_std([0.5]) == '0.5000'
  assert stats.format_mean_std([]) == '-'


@SCIPY
def test_paired_t_matches_r_on_the_sleep_data():
  # R: t.test(extra ~ group, data = sleep, paired = TRUE)
  #   t = -4.0621, df = 9, p-value = 0.002833
  #   95 percent confidence interval: -2.4598858 -0.7001142; mean difference -1.58
  test = stats.paired_t(DRUG1, DRUG2)
  assert test.n == 10 and test.df == 9
  assert test.estimate == pytest.approx(-1.58)
  assert test.t == pytest.approx(-4.0621, abs=1e-4)
  assert test.p == pytest.approx(0.002833, abs=1e-6)
  lo, hi = test.interval(0.95)
  assert lo == pytest.approx(-2.4598858, abs=1e-7)
  assert hi == pytest.approx(-0.7001142, abs=1e-7)


@SCIPY
def test_welch_t_matches_r_on_the_sleep_data_unpaired():
  # R: t.test(extra ~ group, data = sleep)
  #   t = -1.8608, df = 17.776, p-value = 0.07939
  #   95 percent confidence interval: -3.3654832 0.2054832
  test = stats.welch_t(DRUG1, DRUG2)
  assert test.n == 20
  assert test.t == pytest.approx(-1.8608, abs=1e-4)
  assert test.df == pytest.approx(17.776, abs=1e-3)
  assert test.p == pytest.approx(0.07939, abs=1e-5)
  lo, hi = test.interval(0.95)
  assert lo == pytest.approx(-3.3654832, abs=1e-7)
  assert hi == pytest.approx(0.2054832, abs=1e-7)


def test_holm_adjusted_p_values():
  # Sorted: 0.005, 0.01, 0.03, 0.04; times m - i + 1 = 4, 3, 2, 1: 0.02, 0.03,
  # 0.06, 0.04; running maximum: 0.02, 0.03, 0.06, 0.06. Back in input order
  # (R: p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm") = 0.03 0.06 0.06 0.02):
  assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
  assert stats.holm([0.3, 0.6]) == pytest.approx([0.6, 0.6])
  assert stats.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1
  assert stats.holm([0.02]) == [0.02]


def test_holm_alphas_follow_the_steps_until_holm_stops():
  # alpha 0.05, m 4: steps test at 0.0125, 0.05/3, 0.025, 0.05. 0.005 < 0.0125
  # and 0.01 < 0.01667 reject; 0.03 >= 0.025 stops, so 0.03 and 0.04 get 0.025.
  gammas = stats.holm_alphas([0.01, 0.04, 0.03, 0.005], 0.05)
  assert gammas == pytest.approx([0.05 / 3, 0.025, 0.025, 0.0125])
  assert stats.holm_alphas([0.2], 0.05) == [0.05]
  with pytest.raises(ValueError, match=r'alpha=0.6 must be in \(0, 0.5\)'):
    stats.holm_alphas([0.1], 0.6)


@SCIPY
def test_holm_intervals_exclude_zero_exactly_when_holm_rejects():
  rng = random.Random(0)
  for _ in range(200):
    m = rng.randint(1, 6)
    tests = [stats.TTest(rng.gauss(0, 1), rng.uniform(0.2, 1), rng.randint(2, 9), 10)
             for _ in range(m)]
    for c in stats.compare(tests, margin=1.5, alpha=0.05):
      excludes_zero = c.interval[0] > 0 or c.interval[1] < 0
      assert excludes_zero == (c.p_holm < 0.05), c
      inside = -1.5 < c.equivalence_interval[0] and c.equivalence_interval[1] < 1.5
      assert inside == (c.p_equivalent_holm < 0.05), c
      assert c.level >= 0.95 - 1e-12  # never narrower than uncorrected


def test_compare_at_given_levels_matches_holm_at_holms_levels():
  """A family repeated elsewhere, held to the levels Holm gave it here, gets the same
  intervals and verdicts; at any given level, p_holm < alpha exactly when the interval
  excludes 0 (and likewise for equivalence)."""
  rng = random.Random(1)
  for _ in range(100):
    tests = [stats.TTest(rng.gauss(0, 1), rng.uniform(0.2, 1), rng.randint(2, 9), 10)
             for _ in range(rng.randint(1, 6))]
    holm = stats.compare(tests, margin=1.5)
    again = stats.compare_at(tests, [1 - c.level for c in holm],
                             [(1 - c.equivalence_level) / 2 for c in holm], margin=1.5)
    for c, d in zip(holm, again):
      assert d.interval == pytest.approx(c.interval) and d.verdict == c.verdict
      assert d.equivalence_interval == pytest.approx(c.equivalence_interval)
      assert (d.interval[0] > 0 or d.interval[1] < 0) == (d.p_holm < 0.05)
      inside = -1.5 < d.equivalence_interval[0] and d.equivalence_interval[1] < 1.5
      assert inside == (d.p_equivalent_holm < 0.05)
  with pytest.raises(ValueError, match=r'gamma=0.1 must be in \(0, alpha=0.05\]'):
    stats.compare_at(tests[:1], [0.1], [0.01], margin=1.5)
  with pytest.raises(ValueError, match='1 tests need as many levels'):
    stats.compare_at(tests[:1], [0.01, 0.01], [0.01], margin=1.5)


@SCIPY
def test_tost_on_the_sleep_data_by_hand():
  # Paired differences: mean -1.58, sd 1.22999548, n 10, se = sd / sqrt(10) = 0.38895872.
  # Margin 2: H0 "diff <= -2": t = (-1.58 + 2) / se = 1.0798, p = P(T9 > 1.0798) = 0.15416;
  #           H0 "diff >= +2": t = (-1.58 - 2) / se = -9.2041, p = P(T9 < -9.2041) = 3.55e-6;
  #           TOST p = max = 0.15416: not equivalent at alpha 0.05.
  # Margin 3: t = (-1.58 + 3) / se = 3.6508, p = P(T9 > 3.6508) = 0.0026556: equivalent.
  # Duality: the 90% interval -1.58 -+ t_0.95,9 * se = -1.58 -+ 1.833113 * 0.388959
  #          = (-2.293005, -0.866995) lies inside +-3 but not inside +-2.
  test = stats.paired_t(DRUG1, DRUG2)
  assert test.p_equivalent(2) == pytest.approx(0.15416, abs=1e-5)
  assert test.p_equivalent(3) == pytest.approx(0.0026556, abs=1e-7)
  lo, hi = test.interval(0.90)
  assert (lo, hi) == pytest.approx((-2.293005, -0.866995), abs=1e-6)
  [c2] = stats.compare([test], margin=2)
  [c3] = stats.compare([test], margin=3)
  assert c2.equivalence_interval == pytest.approx((lo, hi)) and c2.equivalence_level == 0.9
  assert c2.verdict == 'different'  # p 0.0028 < 0.05, and not within +-2
  assert c3.verdict == 'different, but within +-3'


@SCIPY
def test_tost_with_holm_over_several_comparisons():
  # Two comparisons, alpha 0.05, margin 3. TOST p-values 0.0026556 (sleep data)
  # and 0.04 (constructed below); Holm multiplies the smaller by 2 (0.0053) and
  # the larger by 1 then takes the running maximum (0.04): both equivalent. The
  # first's interval is at 1 - 2 * 0.025 = 95% (step 1), the second's at 90%.
  sleep = stats.paired_t(DRUG1, DRUG2)
  t = stats._t_dist()  # pylint: disable=protected-access
  # estimate 0, df 9: TOST p = P(T9 > 3 / se); choose se so that p = 0.04.
  se = 3 / t.isf(0.04, 9)
  other = stats.TTest(0.0, se, 9, 10)
  assert other.p_equivalent(3) == pytest.approx(0.04)
  first, second = stats.compare([sleep, other], margin=3, alpha=0.05)
  assert first.p_equivalent_holm == pytest.approx(2 * 0.0026556, abs=1e-6)
  assert second.p_equivalent_holm == pytest.approx(0.04)
  assert first.equivalence_level == pytest.approx(0.95)
  assert second.equivalence_level == pytest.approx(0.90)
  assert second.verdict == 'equivalent within +-3'
  # With the sleep comparison's TOST p at 0.03 instead, Holm's first step
  # (0.03 < 0.025?) fails: neither is equivalent, although each alone would be.
  weaker = stats.TTest(0.0, 3 / t.isf(0.03, 9), 9, 10)
  a, b = stats.compare([weaker, other], margin=3, alpha=0.05)
  assert a.p_equivalent_holm == pytest.approx(0.06) and b.p_equivalent_holm == pytest.approx(0.06)
  assert a.verdict == b.verdict == 'inconclusive'


@pytest.mark.parametrize('interval, equivalence_interval, words', [
    ((0.01, 0.03), (0.012, 0.028), 'different'),
    ((-0.03, -0.01), (-0.028, -0.012), 'different'),
    ((-0.002, 0.003), (-0.001, 0.002), 'equivalent within +-0.005'),
    ((0.001, 0.003), (0.0012, 0.0028), 'different, but within +-0.005'),
    ((-0.01, 0.02), (-0.008, 0.018), 'inconclusive'),
    ((-0.001, 0.006), (0.0, 0.005), 'inconclusive'),  # touching the margin is not inside
])
def test_verdict_words(interval, equivalence_interval, words):
  assert stats.verdict(interval, equivalence_interval, 0.005) == words


def test_one_pair_is_an_error_not_a_guess():
  with pytest.raises(ValueError, match='at least 2 values \\(pairs\\), got 1; run more seeds'):
    stats.paired_t([0.9], [0.8])
  with pytest.raises(ValueError, match='at least 2 values per group, got 1 and 3'):
    stats.welch_t([0.9], [0.8, 0.7, 0.6])
  with pytest.raises(ValueError, match='same length, got 2 and 3'):
    stats.paired_t([0.9, 0.8], [0.8, 0.7, 0.6])
  with pytest.raises(ValueError, match=r'non-finite values \[nan\]'):
    stats.paired_t([0.9, math.nan], [0.8, 0.7])


def test_zero_variance_differences_are_the_limit_of_the_t_test():
  # Every seed exactly 0.25 better (binary fractions, so no rounding): a point
  # interval at every level, p = 0, different; inside a margin of 0.5 it is
  # also equivalent.
  constant = stats.paired_t([0.75, 0.5, 0.25], [0.5, 0.25, 0.0])
  assert constant.se == 0 and constant.estimate == 0.25 and constant.t == math.inf
  assert constant.p == 0.0 and constant.interval(0.999) == (0.25, 0.25)
  assert stats.compare([constant], margin=0.5)[0].verdict == 'different, but within +-0.5'
  same = stats.paired_t([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
  assert same.se == 0 and same.estimate == 0
  assert same.p == 1.0 and math.isnan(same.t) and same.interval(0.99) == (0.0, 0.0)
  assert same.p_equivalent(0.005) == 0.0
  [c] = stats.compare([same], margin=0.005)
  assert c.verdict == 'equivalent within +-0.005'
  shifted = stats.TTest(0.01, 0.0, 2, 3)
  assert shifted.p == 0.0 and shifted.t == math.inf and shifted.interval() == (0.01, 0.01)
  assert shifted.p_equivalent(0.005) == 1.0
  assert stats.compare([shifted], margin=0.005)[0].verdict == 'different'
  assert stats.compare([shifted], margin=0.02)[0].verdict == 'different, but within +-0.02'


def test_bad_levels_and_margins_name_the_value():
  test = stats.paired_t(DRUG1, DRUG2)
  with pytest.raises(ValueError, match=r'confidence level=1.5 must be in \(0, 1\)'):
    test.interval(1.5)
  with pytest.raises(ValueError, match='equivalence margin=0 must be > 0'):
    test.p_equivalent(0)
  with pytest.raises(ValueError, match='equivalence margin=-1 must be > 0'):
    stats.compare([test], margin=-1)


def test_the_sweep_table_needs_no_scipy():
  """scipy is the `stats` extra; run.py's summary table (format_mean_std) must work without it."""
  code = '''
import sys
class NoScipy:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] == 'scipy':
      raise ImportError('scipy is not installed')
sys.meta_path.insert(0, NoScipy())
from lenet_jax import stats
print(stats.format_mean_std([0.5, 0.7, 0.9]))
'''
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        cwd=ROOT, timeout=120, env={**os.environ, 'PYTHONPATH': ROOT})
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == '0.7000 +- 0.2000'
