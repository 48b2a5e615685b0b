"""The paired bootstrap over seeds and test images: known answers, consistency, coverage."""
import math

import numpy as np
import pytest

from conftest import requires
from lenet_jax import bootstrap, stats

SCIPY = requires('scipy')  # only for the comparison with the paired t test


def simulate(rng, seeds, examples, effect=0.02, seed_sd=0.03, image_sd=0.04):
  """Per-example correctness of two arms whose expected accuracy difference is `effect`.

  Image j is right with probability pa_j (arm B: pa_j - delta_j, delta_j
  around `effect` within +-image_sd); seed i shifts arm A by e_i (mean 0,
  within +-seed_sd). One uniform per (seed, image) decides both arms, so
  they agree on most images, as two similar networks do. No probability
  leaves [0, 1], so the expected difference over new seeds and images is
  exactly `effect`.
  """
  pa = rng.uniform(0.75, 0.95, examples)
  delta = rng.uniform(effect - image_sd, effect + image_sd, examples)
  e = rng.uniform(-seed_sd, seed_sd, seeds)
  u = rng.random((seeds, examples))
  return u < pa + e[:, None], u < pa - delta


def test_estimate_is_the_difference_of_mean_accuracies_exactly():
  rng = np.random.default_rng(0)
  a, b = simulate(rng, 7, 333)
  t = bootstrap.paired_bootstrap(a, b, resamples=500)
  assert t.estimate == a.mean() - b.mean()
  assert t.n == 7 and t.n_examples == 333 and t.resamples == 500
  # 0/1 integers work the same as booleans, and replicates are exact cell means.
  t01 = bootstrap.paired_bootstrap(a.astype(int), b.astype(float), resamples=500)
  np.testing.assert_array_equal(t01.replicates, t.replicates)
  sums = t.replicates * a.size
  np.testing.assert_array_equal(np.rint(sums) / a.size, t.replicates)
  # The bootstrap mean of the replicates is unbiased for the estimate.
  assert abs(t.replicates.mean() - t.estimate) < 4 * t.se / math.sqrt(t.resamples)


def test_deterministic_given_the_seed():
  a, b = simulate(np.random.default_rng(1), 5, 100)
  x = bootstrap.paired_bootstrap(a, b, resamples=300, seed=3)
  y = bootstrap.paired_bootstrap(a, b, resamples=300, seed=3)
  z = bootstrap.paired_bootstrap(a, b, resamples=300, seed=4)
  np.testing.assert_array_equal(x.replicates, y.replicates)
  assert not np.array_equal(x.replicates, z.replicates)
  assert np.all(np.diff(x.replicates) >= 0)  # sorted


def test_a_large_difference_excludes_zero():
  rng = np.random.default_rng(2)
  a, b = rng.random((5, 1000)) < 0.95, rng.random((5, 1000)) < 0.80
  t = bootstrap.paired_bootstrap(a, b, resamples=2000)
  lo, hi = t.interval(0.95)
  assert 0 < lo < t.estimate < hi
  assert t.p == 2 / 2001  # no replicate at or below 0: the smallest attainable p
  assert t.p_equivalent(0.01) == 1.0  # every replicate above the margin
  [c] = stats.compare([t], margin=0.01)
  assert c.verdict == stats.DIFFERENT and c.interval == t.interval(0.95)


def test_identical_arms_are_a_point_mass_at_zero():
  a = np.random.default_rng(3).random((4, 50)) < 0.9
  t = bootstrap.paired_bootstrap(a, a.copy(), resamples=100)
  assert t.degenerate and t.se == 0 and t.estimate == 0
  assert t.interval(0.5) == t.interval(1 - 1e-9) == (0.0, 0.0)
  assert t.p == 1.0 and t.p_equivalent(0.001) == 0.0
  [c] = stats.compare([t], margin=0.005)
  assert c.verdict == stats.equivalent_words(0.005)


def test_one_arm_always_right_the_other_always_wrong():
  t = bootstrap.paired_bootstrap(np.ones((3, 20), bool), np.zeros((3, 20), bool), resamples=50)
  assert t.degenerate and t.estimate == 1.0 and t.interval(0.99) == (1.0, 1.0)
  assert t.p == 0.0 and t.p_equivalent(0.5) == 1.0 and t.p_equivalent(2.0) == 0.0


def test_a_repeated_column_is_the_seed_bootstrap():
  """Copies of one image add no image variation: only the seeds are resampled."""
  rng = np.random.default_rng(4)
  a, b = rng.random((6, 1)) < 0.5, rng.random((6, 1)) < 0.5
  a[0], b[0] = True, False  # not degenerate
  one = bootstrap.paired_bootstrap(a, b, resamples=1000, seed=9)
  many = bootstrap.paired_bootstrap(np.repeat(a, 37, 1), np.repeat(b, 37, 1), resamples=1000,
                                    seed=9)
  np.testing.assert_array_equal(one.replicates, many.replicates)
  assert one.estimate == many.estimate and one.interval(0.9) == many.interval(0.9)
  # ... and the seed draw is the one for the replicates of the per-seed differences.
  w_rng, _ = np.random.default_rng(9).spawn(2)
  w = bootstrap._seed_counts(6, 1000, w_rng)  # pylint: disable=protected-access
  d = (a.astype(int) - b.astype(int))[:, 0]
  np.testing.assert_array_equal(one.replicates, np.sort(w @ d / 6))


def _random_case(rng):
  seeds, examples = int(rng.integers(2, 7)), int(rng.integers(1, 30))
  pa, pb = rng.uniform(0.3, 1.0, 2)
  a, b = rng.random((seeds, examples)) < pa, rng.random((seeds, examples)) < pb
  resamples = int(rng.choice([19, 20, 99, 200, 999]))
  return bootstrap.paired_bootstrap(a, b, resamples=resamples, seed=int(rng.integers(1 << 30)))


def test_intervals_agree_with_the_p_values_ties_included():
  """The promise `stats.compare` relies on, on discrete distributions with many ties."""
  rng = np.random.default_rng(5)
  for _ in range(300):
    t = _random_case(rng)
    values = np.unique(t.replicates)
    margins = list(np.abs(values[values != 0])[:5]) + list(rng.uniform(0.001, 0.5, 3))
    for gamma in list(rng.uniform(0.0005, 0.5, 8)) + [0.05, 0.05 / 3, 0.01]:
      lo, hi = t.interval(1 - gamma)
      assert lo <= hi
      assert (lo > 0 or hi < 0) == (t.p < gamma), (t, gamma)
      g = gamma / 2
      lo, hi = t.interval(1 - 2 * g)
      for m in margins:  # margins at replicate values: the ties
        assert (-m < lo and hi < m) == (t.p_equivalent(m) < g), (t, g, m)


def test_holm_through_compare_is_consistent():
  rng = np.random.default_rng(6)
  for _ in range(40):
    tests = [_random_case(rng) for _ in range(int(rng.integers(1, 8)))]
    margin, alpha = float(rng.choice([0.02, 0.1, 0.25])), float(rng.choice([0.05, 0.1]))
    for c in stats.compare(tests, margin, alpha):
      assert (c.interval[0] > 0 or c.interval[1] < 0) == (c.p_holm < alpha)
      inside = -margin < c.equivalence_interval[0] and c.equivalence_interval[1] < margin
      assert inside == (c.p_equivalent_holm < alpha)


def test_compare_mixes_bootstrap_and_t_tests_into_verdicts():
  rng = np.random.default_rng(7)
  tests = [bootstrap.paired_bootstrap(*simulate(rng, 10, 2000, effect=e, seed_sd=0.002,
                                                image_sd=0.0), resamples=2000)
           for e in (0.05, 0.0)]
  tests.append(stats.TTest(0.0, 0.0, 9, 10))  # a t test's point limit
  out = stats.compare(tests, margin=0.02)
  assert out[0].verdict == stats.DIFFERENT
  assert out[1].verdict == stats.equivalent_words(0.02)
  assert out[2].verdict == stats.equivalent_words(0.02)
  assert [c.test for c in out] == tests


def test_coverage_and_the_known_conservatism():
  """Covers at least its level; with seed x image noise alone its SE is ~sqrt(3 (S-1)/S) too big.

  Both factors' resampling also resamples the cells' own noise, so it is
  counted about three times (McCullagh 2000; Owen 2007), which the
  docstring states.
  """
  rng = np.random.default_rng(8)
  runs, effect = 150, 0.02
  covered, ses, estimates = 0, [], []
  for r in range(runs):
    t = bootstrap.paired_bootstrap(*simulate(rng, 10, 200, effect), resamples=999, seed=r)
    lo, hi = t.interval(0.9)
    covered += lo <= effect <= hi
  assert 0.85 <= covered / runs <= 1.0
  for r in range(runs):  # no seed or image effect: only the cells' noise
    t = bootstrap.paired_bootstrap(*simulate(rng, 10, 200, effect, 0.0, 0.0), resamples=299,
                                   seed=r)
    ses.append(t.se)
    estimates.append(t.estimate)
  ratio = np.mean(ses) / np.std(estimates)
  assert 1.3 < ratio < 1.9, ratio


@SCIPY
def test_like_the_paired_t_test_when_the_seeds_dominate():
  """With 20,000 images the image terms are negligible: the spread is the seeds'.

  The bootstrap interval is then narrower, by sqrt((S - 1) / S) and the
  normal-versus-t quantile: about 0.82 of the t interval at 10 seeds.
  """
  rng = np.random.default_rng(9)
  a, b = simulate(rng, 10, 20_000, effect=0.01, seed_sd=0.05, image_sd=0.0)
  boot = bootstrap.paired_bootstrap(a, b, resamples=4000)
  t = stats.paired_t(a.mean(1), b.mean(1))
  assert boot.estimate == pytest.approx(t.estimate, abs=1e-12)
  lo, hi = boot.interval(0.95)
  tlo, thi = t.interval(0.95)
  assert 0.65 < (hi - lo) / (thi - tlo) < 1.05
  assert boot.se == pytest.approx(t.se * math.sqrt(9 / 10), rel=0.15)


def test_interaction_of_two_datasets():
  rng = np.random.default_rng(10)
  a1, b1 = simulate(rng, 8, 500, effect=0.08, seed_sd=0.01)
  a2, b2 = simulate(rng, 6, 400, effect=0.0, seed_sd=0.01)
  t = bootstrap.interaction_bootstrap(a1, b1, a2, b2, resamples=2000)
  assert t.estimate == (a1.mean() - b1.mean()) - (a2.mean() - b2.mean())
  assert t.n == 14 and t.n_examples == 900
  assert t.interval(0.95)[0] > 0 and t.p < 0.01
  # The same effect in both: no interaction to find.
  a3, b3 = simulate(rng, 8, 500, effect=0.08, seed_sd=0.01)
  same = bootstrap.interaction_bootstrap(a1, b1, a3, b3, resamples=2000)
  lo, hi = same.interval(0.95)
  assert lo < 0 < hi
  # Against identical arms, the interaction's spread is the first dataset's alone.
  alone = bootstrap.paired_bootstrap(a1, b1, resamples=2000)
  flat = bootstrap.interaction_bootstrap(a1, b1, a2, a2, resamples=2000)
  assert flat.estimate == alone.estimate
  assert flat.se == pytest.approx(alone.se, rel=0.1)


def test_interaction_with_paired_seeds_cancels_a_shared_seed_effect():
  """The same runs on two test sets: a seed's shift common to both cancels only if paired."""
  a = np.array([[1], [1], [0], [1], [0]], bool)
  b = np.zeros((5, 1), bool)
  paired = bootstrap.interaction_bootstrap(a, b, a, b, resamples=500, paired_seeds=True)
  assert np.all(paired.replicates == 0) and paired.interval(0.99) == (0.0, 0.0)
  assert paired.p == 1.0 and paired.n == 5
  unpaired = bootstrap.interaction_bootstrap(a, b, a, b, resamples=500)
  assert unpaired.se > 0.2
  with pytest.raises(ValueError, match='same seeds'):
    bootstrap.interaction_bootstrap(a, b, a[:3], b[:3], paired_seeds=True)


def test_accuracy_interval():
  rng = np.random.default_rng(11)
  a = rng.random((5, 3000)) < 0.97
  lo, hi = bootstrap.accuracy_interval(a, 0.95, resamples=2000)
  assert 0.9 < lo < a.mean() < hi < 1.0
  wide = bootstrap.accuracy_interval(a[:, :300], 0.95, resamples=2000)
  assert wide[1] - wide[0] > hi - lo
  assert bootstrap.accuracy_interval(np.ones((3, 10), bool)) == (1.0, 1.0)
  t = bootstrap.accuracy_bootstrap(a, resamples=2000)
  assert t.estimate == a.mean() and t.interval(0.95) == (lo, hi)


def test_refuses_what_it_cannot_test():
  ok = np.ones((3, 4), bool)
  with pytest.raises(ValueError, match='paired'):
    bootstrap.paired_bootstrap(ok, np.ones((3, 5), bool))
  with pytest.raises(ValueError, match='0/1'):
    bootstrap.paired_bootstrap(ok, np.full((3, 4), 0.5))
  with pytest.raises(ValueError, match='at least 2'):
    bootstrap.paired_bootstrap(ok[:1], ok[:1])
  with pytest.raises(ValueError, match='shape'):
    bootstrap.paired_bootstrap(ok[0], ok[0])
  t = bootstrap.paired_bootstrap(ok, ~ok | (np.arange(4) < 2), resamples=9)
  with pytest.raises(ValueError, match='level'):
    t.interval(1.0)
  with pytest.raises(ValueError, match='margin'):
    t.p_equivalent(0.0)
  # A level finer than B replicates resolve is the whole line, and never excludes 0.
  assert t.interval(1 - 0.1) == (-math.inf, math.inf)


def test_no_narrower_than_takes_the_more_cautious_of_the_two_tests():
  """The bootstrap as the study uses it: never narrower than the paired t over seeds, and
  still consistent with Holm's levels (an interval excludes 0 exactly when p < gamma)."""
  rng = np.random.default_rng(3)
  a = rng.random((10, 2000)) < 0.90
  b = rng.random((10, 2000)) < 0.89
  boot = bootstrap.paired_bootstrap(a, b)
  t = stats.paired_t(a.mean(axis=1), b.mean(axis=1))
  both = bootstrap.NoNarrowerThan(boot, t)
  assert both.estimate == pytest.approx(t.estimate) and both.n == 10
  assert both.p == max(boot.p, t.p) and both.se == max(boot.se, t.se)
  assert both.p_equivalent(0.005) == max(boot.p_equivalent(0.005), t.p_equivalent(0.005))
  for level in (0.9, 0.95, 0.99, 0.995):
    lo, hi = both.interval(level)
    assert lo == min(boot.interval(level)[0], t.interval(level)[0])
    assert hi == max(boot.interval(level)[1], t.interval(level)[1])
  for c in stats.compare([both, both], 0.005):
    assert (c.interval[0] > 0 or c.interval[1] < 0) == (c.p_holm < 0.05)
