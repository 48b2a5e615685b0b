"""Mean, standard deviation and Student-t confidence intervals over seeds."""
import math
from collections.abc import Sequence

# Two-sided 95% Student-t critical values, by degrees of freedom.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365,
        8: 2.306, 9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145,
        15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060,
        30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t95(df: int) -> float:
  """The 97.5% quantile of Student's t with `df` degrees of freedom (conservative between entries)."""
  if df < 1:
    return math.nan
  below = [d for d in _T95 if d <= df]
  return _T95[max(below)] if df <= 120 else 1.960


def summarise(values: Sequence[float]) -> dict[str, float]:
  """n, mean, sample std, and the 95% CI half-width of the mean."""
  values = [v for v in values if v is not None and math.isfinite(v)]
  n = len(values)
  if n == 0:
    return {'n': 0, 'mean': math.nan, 'std': math.nan, 'ci95': math.nan}
  mean = sum(values) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
  return {'n': n, 'mean': mean, 'std': std,
          'ci95': t95(n - 1) * std / math.sqrt(n) if n > 1 else math.nan}


def format_mean_std(values: Sequence[float], digits: int = 4) -> str:
  s = summarise(values)
  if s['n'] == 0:
    return '-'
  if s['n'] == 1:
    return f"{s['mean']:.{digits}f}"
  return f"{s['mean']:.{digits}f} +- {s['std']:.{digits}f}"
