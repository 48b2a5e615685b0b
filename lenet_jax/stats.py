"""Statistics over seeds: summaries, paired and Welch t tests, Holm, TOST, verdicts.

A comparison of two configurations is a `TTest`: an estimated difference, its
standard error and degrees of freedom, from which every p-value and interval
follows. `paired_t` differences runs of the same seed (the design of a sweep:
every configuration trains on every seed); `welch_t` is for unpaired groups.

Several comparisons are corrected together by `compare`:
  * difference: Holm's step-down procedure on the two-sided p-values, with
    intervals at Holm's step levels (`holm_alphas`), so that an interval
    excludes 0 exactly when Holm rejects "no difference";
  * equivalence: TOST (two one-sided tests) against a margin stated in
    advance, Holm across the comparisons in the same way, so that the
    (1 - 2 gamma) interval lies inside +-margin exactly when Holm rejects
    "the difference is at least the margin";
  * `verdict` turns the two intervals into words.
`compare_at` tests each comparison at a level given beforehand instead (a family's
comparisons repeated elsewhere, held to the levels Holm gave them in the family).

scipy is imported inside the functions that need it (t quantiles and tail
probabilities), so importing this module is cheap, and `format_mean_std`, which
the sweep's summary table uses, works without it.
"""
import dataclasses
import math
from collections.abc import Sequence


def _t_dist():
  from scipy import stats as scipy_stats  # pylint: disable=import-outside-toplevel
  return scipy_stats.t


def t_quantile(q: float, df: float) -> float:
  """The q quantile of Student's t with `df` (possibly fractional) degrees of freedom."""
  if not df >= 1:
    return math.nan
  return float(_t_dist().ppf(q, df))


def t95(df: float) -> float:
  """The 97.5% quantile of Student's t with `df` degrees of freedom (nan below 1)."""
  return t_quantile(0.975, df)


def _mean_std(values: Sequence[float]) -> dict[str, float]:
  """n, mean and sample std of the finite values; needs no scipy."""
  values = [v for v in values if v is not None and math.isfinite(v)]
  n = len(values)
  if n == 0:
    return {'n': 0, 'mean': math.nan, 'std': math.nan}
  mean = sum(values) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
  return {'n': n, 'mean': mean, 'std': std}


def summarise(values: Sequence[float]) -> dict[str, float]:
  """n, mean, sample std, and the 95% CI half-width of the mean (non-finite values dropped)."""
  s = _mean_std(values)
  n = s['n']
  return {**s, 'ci95': t95(n - 1) * s['std'] / math.sqrt(n) if n > 1 else math.nan}


def format_mean_std(values: Sequence[float], digits: int = 4) -> str:
  """'mean +- std', as the sweep's summary table prints it (no scipy needed)."""
  s = _mean_std(values)
  if s['n'] == 0:
    return '-'
  if s['n'] == 1:
    return f"{s['mean']:.{digits}f}"
  return f"{s['mean']:.{digits}f} +- {s['std']:.{digits}f}"


# ----------------------------------------------------------------------------
# t tests


@dataclasses.dataclass(frozen=True)
class TTest:
  """A difference estimated with a t distribution: everything else derives from these.

  A zero standard error (every paired difference equal, or no spread in
  either Welch group) is taken as the limit of the t test as the spread goes
  to 0: the interval is the point `estimate` at every level, the two-sided
  p-value is 0 if the estimate is not 0 and 1 if it is. On discrete
  accuracies this happens when two configurations train identically on every
  seed; the report says so where it happens.
  """
  estimate: float  # mean difference, first minus second
  se: float  # its standard error
  df: float  # degrees of freedom (fractional for Welch)
  n: int  # pairs for a paired test; runs in both groups for Welch

  @property
  def t(self) -> float:
    if self.se == 0:
      return math.copysign(math.inf, self.estimate) if self.estimate else math.nan
    return self.estimate / self.se

  @property
  def p(self) -> float:
    """Two-sided p-value for "the difference is 0"."""
    if self.se == 0:
      return 0.0 if self.estimate else 1.0
    return float(2 * _t_dist().sf(abs(self.t), self.df))

  def interval(self, level: float = 0.95) -> tuple[float, float]:
    """The two-sided confidence interval for the difference at `level`."""
    if not 0 < level < 1:
      raise ValueError(f'confidence level={level} must be in (0, 1).')
    half = 0.0 if self.se == 0 else t_quantile(1 - (1 - level) / 2, self.df) * self.se
    return self.estimate - half, self.estimate + half

  def p_equivalent(self, margin: float) -> float:
    """TOST p-value for "|difference| >= margin": the larger of the two one-sided p-values.

    Below `gamma` exactly when the (1 - 2 gamma) interval lies inside
    (-margin, +margin).
    """
    if not margin > 0:
      raise ValueError(f'equivalence margin={margin} must be > 0.')
    if self.se == 0:
      return 0.0 if abs(self.estimate) < margin else 1.0
    t = _t_dist()
    p_above_lower = t.sf((self.estimate + margin) / self.se, self.df)  # H0: diff <= -margin
    p_below_upper = t.cdf((self.estimate - margin) / self.se, self.df)  # H0: diff >= +margin
    return float(max(p_above_lower, p_below_upper))


def _finite(name: str, values: Sequence[float]) -> list[float]:
  values = [float(v) for v in values]
  bad = [v for v in values if not math.isfinite(v)]
  if bad:
    raise ValueError(f'{name} holds non-finite values {bad}; drop those runs (and their '
                     'pairs) before testing.')
  return values


def one_sample_t(values: Sequence[float], mu: float = 0.0) -> TTest:
  """The t test of mean(values) - mu: the paired test's core."""
  values = _finite('values', values)
  n = len(values)
  if n < 2:
    raise ValueError(f'a t test needs at least 2 values (pairs), got {n}; run more seeds.')
  mean = sum(values) / n
  var = sum((v - mean) ** 2 for v in values) / (n - 1)
  return TTest(mean - mu, math.sqrt(var / n), n - 1, n)


def paired_t(a: Sequence[float], b: Sequence[float]) -> TTest:
  """The paired t test of a - b, a[i] and b[i] from the same seed (R: t.test(paired=TRUE))."""
  a, b = _finite('a', a), _finite('b', b)
  if len(a) != len(b):
    raise ValueError(f'paired samples must have the same length, got {len(a)} and {len(b)}.')
  return one_sample_t([x - y for x, y in zip(a, b)])


def welch_t(a: Sequence[float], b: Sequence[float]) -> TTest:
  """Welch's unpaired t test of mean(a) - mean(b), unequal variances (R: t.test default)."""
  a, b = _finite('a', a), _finite('b', b)
  if len(a) < 2 or len(b) < 2:
    raise ValueError(f'Welch\'s test needs at least 2 values per group, got {len(a)} and '
                     f'{len(b)}; run more seeds.')
  sa, sb = _mean_std(a), _mean_std(b)
  va, vb = sa['std'] ** 2 / len(a), sb['std'] ** 2 / len(b)
  se = math.sqrt(va + vb)
  if se == 0:
    df = len(a) + len(b) - 2.0  # no spread to weigh; the limit is a point anyway
  else:
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  return TTest(sa['mean'] - sb['mean'], se, df, len(a) + len(b))


# ----------------------------------------------------------------------------
# Multiplicity


def _check_alpha(alpha: float) -> None:
  if not 0 < alpha < 0.5:
    raise ValueError(f'alpha={alpha} must be in (0, 0.5) (TOST uses 1 - 2 alpha intervals).')


def holm(pvalues: Sequence[float]) -> list[float]:
  """Holm's step-down adjusted p-values, in the input order (R: p.adjust(p, 'holm')).

  Sorted ascending, p_(i) is multiplied by m - i + 1 (i from 1), then made
  non-decreasing by a running maximum and capped at 1.
  """
  m = len(pvalues)
  order = sorted(range(m), key=lambda i: pvalues[i])
  adjusted = [0.0] * m
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (m - rank) * pvalues[i]))
    adjusted[i] = running
  return adjusted


def holm_alphas(pvalues: Sequence[float], alpha: float) -> list[float]:
  """Per hypothesis, the significance level gamma of its Holm-consistent interval.

  Holm's step i (p sorted ascending, i from 1) tests at alpha / (m - i + 1)
  and stops at the first step k that does not reject. Hypothesis i gets
  gamma = alpha / (m - min(i, k) + 1): the rejected ones their own step's
  level, every one from step k on the level of step k. Then an interval at
  level 1 - gamma excludes 0 exactly when Holm rejects (the Holm-adjusted p
  is below alpha). For the hypotheses Holm does not reject these are the
  simultaneous intervals of Strassburger and Bretz (2008); for the rejected
  ones the simultaneous guarantee covers the sign, and the interval shown is
  the marginal one at the step's level, never narrower than an uncorrected
  (1 - alpha) interval. With one comparison, gamma = alpha.
  """
  _check_alpha(alpha)
  m = len(pvalues)
  order = sorted(range(m), key=lambda i: pvalues[i])
  gammas = [0.0] * m
  stop = None  # the step level in force once Holm has stopped rejecting
  for rank, i in enumerate(order):
    step = alpha / (m - rank)
    if stop is None and not pvalues[i] < step:
      stop = step
    gammas[i] = step if stop is None else stop
  return gammas


# ----------------------------------------------------------------------------
# Verdicts


DIFFERENT = 'different'
INCONCLUSIVE = 'inconclusive'


def equivalent_words(margin: float) -> str:
  return f'equivalent within +-{margin:g}'


def verdict(interval: tuple[float, float], equivalence_interval: tuple[float, float],
            margin: float) -> str:
  """One of 'different', 'equivalent within +-m', 'different, but within +-m', 'inconclusive'.

  `interval` is the corrected two-sided interval of the difference: it is
  different when that excludes 0. `equivalence_interval` is the corrected
  (1 - 2 gamma) TOST interval: it is equivalent when that lies strictly
  inside (-margin, +margin). A difference can be both, real but smaller than
  the margin; that reads 'different, but within +-m'.
  """
  if not margin > 0:
    raise ValueError(f'equivalence margin={margin} must be > 0.')
  different = interval[0] > 0 or interval[1] < 0
  equivalent = -margin < equivalence_interval[0] and equivalence_interval[1] < margin
  if different and equivalent:
    return f'{DIFFERENT}, but within +-{margin:g}'
  if different:
    return DIFFERENT
  if equivalent:
    return equivalent_words(margin)
  return INCONCLUSIVE


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One test of a family, corrected with the others (see `compare`)."""
  test: TTest
  p: float  # uncorrected two-sided p-value
  p_holm: float  # Holm-adjusted, over the family
  level: float  # confidence level of `interval`: 1 - Holm's gamma
  interval: tuple[float, float]  # Holm-consistent interval of the difference
  p_equivalent: float  # uncorrected TOST p-value at the margin
  p_equivalent_holm: float  # Holm-adjusted TOST p-value
  equivalence_level: float  # level of `equivalence_interval`: 1 - 2 gamma
  equivalence_interval: tuple[float, float]
  verdict: str


def compare(tests: Sequence[TTest], margin: float, alpha: float = 0.05) -> list[Comparison]:
  """Corrects a family of tests together: Holm for the difference, Holm for TOST.

  The two families (difference, equivalence) are each held at family-wise
  error rate alpha; `verdict` combines them per comparison.
  """
  _check_alpha(alpha)
  if not margin > 0:
    raise ValueError(f'equivalence margin={margin} must be > 0.')
  p = [t.p for t in tests]
  p_eq = [t.p_equivalent(margin) for t in tests]
  gamma, gamma_eq = holm_alphas(p, alpha), holm_alphas(p_eq, alpha)
  out = []
  for test, pi, pi_holm, g, pe, pe_holm, ge in zip(
      tests, p, holm(p), gamma, p_eq, holm(p_eq), gamma_eq):
    interval = test.interval(1 - g)
    equivalence_interval = test.interval(1 - 2 * ge)
    out.append(Comparison(test, pi, pi_holm, 1 - g, interval, pe, pe_holm, 1 - 2 * ge,
                          equivalence_interval, verdict(interval, equivalence_interval, margin)))
  return out


def compare_at(tests: Sequence[TTest], gammas: Sequence[float], equivalence_gammas: Sequence[float],
               margin: float, alpha: float = 0.05) -> list[Comparison]:
  """Each test at a level fixed beforehand, not corrected with the others: its interval
  at 1 - gamma and its TOST interval at 1 - 2 gamma_eq, as if it sat at those steps of a
  family tested elsewhere (a repeat of a family's comparisons, held to the family's
  levels). p_holm is p rescaled to that level (min(1, p alpha / gamma)), so that it
  is below alpha exactly when the interval excludes 0; likewise for equivalence.
  """
  _check_alpha(alpha)
  if not margin > 0:
    raise ValueError(f'equivalence margin={margin} must be > 0.')
  if not len(tests) == len(gammas) == len(equivalence_gammas):
    raise ValueError(f'{len(tests)} tests need as many levels (got {len(gammas)} and '
                     f'{len(equivalence_gammas)}).')
  out = []
  for test, g, ge in zip(tests, gammas, equivalence_gammas):
    for name, x in (('gamma', g), ('equivalence gamma', ge)):
      if not 0 < x <= alpha * (1 + 1e-9):  # levels read back as 1 - gamma round a little
        raise ValueError(f'{name}={x} must be in (0, alpha={alpha}].')
    g, ge = min(g, alpha), min(ge, alpha)
    p, pe = test.p, test.p_equivalent(margin)
    interval, equivalence_interval = test.interval(1 - g), test.interval(1 - 2 * ge)
    out.append(Comparison(test, p, min(1.0, p * alpha / g), 1 - g, interval, pe,
                          min(1.0, pe * alpha / ge), 1 - 2 * ge, equivalence_interval,
                          verdict(interval, equivalence_interval, margin)))
  return out
