"""A paired bootstrap over seeds and test images: a drop-in test for `stats.compare`.

A difference in test accuracy between two configurations has two sources of
sampling error: the seeds (each training run is one draw of initialisation
and data order) and the test images (the test set is one sample of images,
and every run saw the same one). The paired t test of `stats.paired_t` sees
only the first, through the per-seed accuracies. `paired_bootstrap` resamples
both, from per-example correctness of shape (seeds, test examples):

  * seeds with replacement, the same draw for both arms (row i of both arms
    is seed i: paired, as the t test pairs them);
  * test images with replacement, the same draw for both arms and for every
    seed (column j is the same image in every run).

One replicate is the mean of a - b over the drawn (seed, image) cells,
w^T D v / (S N), with D = a - b, w ~ Multinomial(S, 1/S) seed counts and
v ~ Multinomial(N, 1/N) image counts. Columns where D is 0 for every seed add
nothing whatever their count, so only the k columns where some seed's arms
disagree are drawn: Binomial(N, k/N) of the N draws land on them, spread
uniformly, the same distribution as the full draw. Counts are integers and
D is in {-1, 0, 1}, so each replicate's sum is exact.

`BootstrapTest` answers what `stats.TTest` answers for `stats.compare`
(`estimate`, `p`, `p_equivalent`, `interval`, plus `se` and `n`) from the
sorted replicates; it has no `df` or `t` (no t distribution). p-values carry
the usual (count + 1) / (B + 1) correction, and intervals are percentile
intervals cut at the order statistics that make them agree with the p-values
exactly, ties included (see `BootstrapTest`). So `compare`'s promises hold: an
interval at level 1 - gamma excludes 0 exactly when p < gamma, and the
(1 - 2 gamma) interval lies inside +-margin exactly when the TOST p < gamma.

Monte Carlo error, at the default B = 20,000: a p-value near p has standard
error sqrt(p (1 - p) / B), 0.00035 at p = 0.0025 and 0.0015 at p = 0.05; an
interval end at tail 0.0025 (Holm's smallest level for a family of 10 at
alpha 0.05, two-sided) rests on 50 replicates beyond it. The smallest
attainable p is 2 / (B + 1) two-sided and 1 / (B + 1) for TOST; an interval
at a level finer than that is (-inf, inf) (B = 20,000 serves families of up
to 500 at alpha 0.05).

Caveats, both known for bootstraps of crossed designs (McCullagh 2000; Owen
2007, "the pigeonhole bootstrap"); no resampling scheme is exact for them.
With D_ij = mu + r_i (seed) + c_j (image) + e_ij (seed-by-image), the
estimate's variance is var(r)/S + var(c)/N + var(e)/(S N), and this
bootstrap's is about var(r)/S + var(c)/N + 3 var(e)/(S N) (times (S - 1)/S
on the seed terms):
  * too narrow with few seeds when the seeds dominate: (S - 1)/S of the seed
    variance and normal, not t, quantiles: about 0.82 of the paired t
    interval's width at S = 10, 0.63 at S = 5, 0.37 at S = 3;
  * too wide when the seed-by-image noise dominates (an image right in some
    seeds and wrong in others, typical of two similar networks): its
    standard error up to sqrt(3 (S - 1)/S) times the truth, 1.6 in the
    simulations of tests/test_bootstrap.py at S = 10.
Use 10 or more seeds; it then errs on the conservative side when the
image terms matter and is close to the paired t test when they do not.

For per-seed scalar metrics (no per-example data) the paired t test stays.
"""
import dataclasses
import math

import numpy as np

RESAMPLES = 20_000  # even: B + 1 odd, so no alpha / m (alpha 0.1, 0.05, 0.01) is an attainable p
_CHUNK_CELLS = 1 << 16  # replicates x drawn columns per chunk: counts that stay in cache
_EXACT_FLOAT32 = 1 << 24  # float32 sums of integers are exact below this
_SNAP = 1e-9  # relative: a level this close to an attainable p-value is that p-value


@dataclasses.dataclass(frozen=True, eq=False)
class BootstrapTest:
  """A difference and its bootstrap distribution: a drop-in `stats.TTest` for `stats.compare`.

  p-values, with B replicates T_b and tail(c) = (c + 1) / (B + 1):
    p = min(1, 2 min(tail(#{T <= 0}), tail(#{T >= 0})))  (difference is 0)
    p_equivalent(m) = max(tail(#{T <= -m}), tail(#{T >= m}))  (TOST: H0 diff <= -m
      is rejected when few replicates lie at or below -m; likewise at +m).
  interval(1 - gamma) is [T_(j+1), T_(B-j)] (order statistics, 1-based), j the
  largest count with 2 tail(j) < gamma: the percentile interval whose ends
  are the replicates that make it exclude a value x exactly when the tail
  beyond x would reject. Ties are resolved against rejection on both sides:
  a replicate equal to 0 (or to -+m) counts in the p-value's tail, and the
  interval is closed, so an end equal to 0 does not exclude 0. The level
  arrives as 1 - gamma, which rounds; a gamma within 1e-9 (relative) of an
  attainable p-value is taken as equal to it (no rejection), so an interval
  never rejects what its p-value does not. (With B even and alpha 0.1,
  0.05 or 0.01, Holm's levels alpha / i are never attainable p-values.)
  `degenerate`: every cell's difference is the same (identical predictions,
  or one arm always right and the other always wrong), so every replicate
  is the estimate; as for `TTest` with se 0, the interval is that point at
  every level, p is 0 (1 if the estimate is 0), TOST p is 0 inside the
  margin and 1 outside.
  """
  estimate: float  # the difference of mean accuracies, first minus second
  replicates: np.ndarray = dataclasses.field(repr=False)  # sorted, float64
  n: int  # seeds (pairs); for an interaction, those of both datasets
  n_examples: int  # test examples; for an interaction, those of both datasets
  degenerate: bool = False

  @property
  def resamples(self) -> int:
    return int(self.replicates.size)

  @property
  def se(self) -> float:
    """The bootstrap standard error (replicates' std); 0 exactly when `degenerate`."""
    return 0.0 if self.degenerate else float(np.std(self.replicates, ddof=1))

  def _tail(self, count: int) -> float:
    return (count + 1) / (self.resamples + 1)

  def _at_most(self, x: float) -> int:
    return int(np.searchsorted(self.replicates, x, side='right'))

  def _at_least(self, x: float) -> int:
    return self.resamples - int(np.searchsorted(self.replicates, x, side='left'))

  @property
  def p(self) -> float:
    """Two-sided p-value for "the difference is 0"."""
    if self.degenerate:
      return 0.0 if self.estimate else 1.0
    return min(1.0, 2 * min(self._tail(self._at_most(0.0)), self._tail(self._at_least(0.0))))

  def p_equivalent(self, margin: float) -> float:
    """TOST p-value for "|difference| >= margin": the larger of the two one-sided p-values.

    Below `gamma` exactly when the (1 - 2 gamma) interval lies inside
    (-margin, +margin).
    """
    if not margin > 0:
      raise ValueError(f'equivalence margin={margin} must be > 0.')
    if self.degenerate:
      return 0.0 if abs(self.estimate) < margin else 1.0
    return max(self._tail(self._at_most(-margin)), self._tail(self._at_least(margin)))

  def interval(self, level: float = 0.95) -> tuple[float, float]:
    """The two-sided percentile interval at `level`; (-inf, inf) finer than B resolves."""
    if not 0 < level < 1:
      raise ValueError(f'confidence level={level} must be in (0, 1).')
    if self.degenerate:
      return self.estimate, self.estimate
    gamma, b = 1 - level, self.resamples
    # The same float expression as `p`, so the cut agrees with it; a gamma
    # within rounding of an attainable p (1 - level loses the last bits) is
    # taken as equal to it, which does not reject.
    counts = np.arange(b + 1)
    attainable = np.minimum(1.0, 2 * ((counts + 1) / (b + 1)))
    j = int(np.count_nonzero(attainable < gamma * (1 - _SNAP))) - 1
    if j < 0:
      return -math.inf, math.inf
    return float(self.replicates[j]), float(self.replicates[b - 1 - j])


@dataclasses.dataclass(frozen=True)
class NoNarrowerThan:
  """The more cautious of two tests of one difference: each p-value the larger, each
  interval the hull of both. Used to keep the bootstrap's intervals from being
  narrower than the paired t test's over seeds, which they can be at Holm's small
  levels when the spread between seeds dominates (normal tails, (S-1)/S of the seed
  variance). The consistency `stats.compare` relies on carries over: the hull at
  1 - gamma excludes 0 exactly when both do, that is when the larger p is below gamma
  (likewise for TOST).
  """
  first: object  # e.g. a BootstrapTest
  second: object  # e.g. the paired stats.TTest of the same difference

  @property
  def estimate(self) -> float:
    return self.first.estimate

  @property
  def n(self) -> int:
    return self.first.n

  @property
  def se(self) -> float:
    return max(self.first.se, self.second.se)

  @property
  def p(self) -> float:
    return max(self.first.p, self.second.p)

  def p_equivalent(self, margin: float) -> float:
    return max(self.first.p_equivalent(margin), self.second.p_equivalent(margin))

  def interval(self, level: float = 0.95) -> tuple[float, float]:
    (a, b), (c, d) = self.first.interval(level), self.second.interval(level)
    return min(a, c), max(b, d)


def _correctness(name: str, x) -> np.ndarray:
  """(seeds, examples) of 0/1 as int8, checked."""
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f'{name} must have shape (seeds, test examples), got {x.shape}.')
  if x.dtype != bool and not np.all((x == 0) | (x == 1)):
    raise ValueError(f'{name} must hold per-example correctness: booleans or 0/1.')
  if x.shape[0] < 2:
    raise ValueError(f'{name} has {x.shape[0]} seed(s); a bootstrap over seeds needs at '
                     'least 2; run more seeds.')
  if x.shape[1] < 1:
    raise ValueError(f'{name} has no test examples.')
  return x.astype(np.int8)


def _pair(a, b, names=('a', 'b')) -> tuple[np.ndarray, np.ndarray]:
  a, b = _correctness(names[0], a), _correctness(names[1], b)
  if a.shape != b.shape:
    raise ValueError(f'{names[0]} and {names[1]} must be paired: the same seeds (rows) and '
                     f'test examples (columns), got shapes {a.shape} and {b.shape}.')
  return a, b


def _generator(seed) -> np.random.Generator:
  return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _seed_counts(seeds: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
  """(resamples, seeds) counts, each row Multinomial(seeds, 1/seeds)."""
  idx = rng.integers(0, seeds, size=(resamples, seeds), dtype=np.int64)
  idx += np.arange(resamples, dtype=np.int64)[:, None] * seeds
  return np.bincount(idx.ravel(), minlength=resamples * seeds).reshape(resamples, seeds)


def _sums(d: np.ndarray, w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Per replicate, the exact integer w_b^T d v_b, v_b ~ Multinomial(N, 1/N) drawn from `rng`."""
  resamples = w.shape[0]
  n = d.shape[1]
  cols = np.flatnonzero(np.any(d != 0, axis=0))
  k = cols.size
  out = np.zeros(resamples, np.int64)
  if k == 0:
    return out
  # |partial sums of d v| <= sum v = n, so float32 is exact below 2^24.
  dk = d[:, cols].astype(np.float32 if n < _EXACT_FLOAT32 else np.float64)
  chunk = max(1, _CHUNK_CELLS // k)
  for start in range(0, resamples, chunk):
    c = min(chunk, resamples - start)
    hits = rng.binomial(n, k / n, size=c)  # of the n image draws, those on the k columns
    idx = rng.integers(0, k, size=int(hits.sum()), dtype=np.int64)
    idx += np.repeat(np.arange(c, dtype=np.int64) * k, hits)
    v = np.bincount(idx, minlength=c * k).reshape(c, k).astype(dk.dtype)
    dv = np.rint(v @ dk.T).astype(np.int64)  # (c, seeds): per seed, the image-weighted sum
    out[start:start + c] = np.einsum('cs,cs->c', dv, w[start:start + c])
  return out


def _replicates(d: np.ndarray, w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Unsorted float64 replicates of mean(d) over the drawn cells."""
  return _sums(d, w, rng) / float(d.size)


def _check_resamples(resamples: int) -> None:
  if resamples < 1:
    raise ValueError(f'resamples={resamples} must be >= 1.')


def paired_bootstrap(a, b, resamples: int = RESAMPLES, seed=0) -> BootstrapTest:
  """The bootstrap of mean(a) - mean(b) over seeds and test images, paired on both.

  `a`, `b`: per-example correctness (bool or 0/1), shape (seeds, test
  examples); row i of both is seed i, column j of both is test image j.
  `seed`: an int (or a numpy Generator); the result is a function of it.
  Time grows with the images on which some seed's arms disagree: for 10
  seeds x 10,000 images at the default B, about 0.1 s at 99% accuracy (some
  700 such images) and 1 s when every image is one (2 CPU cores).
  """
  _check_resamples(resamples)
  a, b = _pair(a, b)
  d = a - b
  seeds, examples = d.shape
  w_rng, v_rng = _generator(seed).spawn(2)
  w = _seed_counts(seeds, resamples, w_rng)
  return BootstrapTest(float(np.mean(a) - np.mean(b)), np.sort(_replicates(d, w, v_rng)),
                       seeds, examples, degenerate=bool(np.all(d == d.flat[0])))


def interaction_bootstrap(a1, b1, a2, b2, resamples: int = RESAMPLES, seed=0,
                          paired_seeds: bool = False) -> BootstrapTest:
  """The bootstrap of (mean a1 - mean b1) - (mean a2 - mean b2): does the effect differ?

  Two datasets (or test sets), each paired within itself as in
  `paired_bootstrap` and resampled independently of the other: its seeds
  and its own test images. `paired_seeds=True` draws the same seeds for
  both (needs as many seeds in each): for the same trained runs evaluated on
  two test sets, where seed i of one is seed i of the other.
  """
  _check_resamples(resamples)
  a1, b1 = _pair(a1, b1, ('a1', 'b1'))
  a2, b2 = _pair(a2, b2, ('a2', 'b2'))
  d1, d2 = a1 - b1, a2 - b2
  if paired_seeds and d1.shape[0] != d2.shape[0]:
    raise ValueError(f'paired_seeds needs the same seeds in both datasets, got {d1.shape[0]} '
                     f'and {d2.shape[0]}.')
  w1_rng, v1_rng, w2_rng, v2_rng = _generator(seed).spawn(4)
  w1 = _seed_counts(d1.shape[0], resamples, w1_rng)
  w2 = w1 if paired_seeds else _seed_counts(d2.shape[0], resamples, w2_rng)
  replicates = _replicates(d1, w1, v1_rng) - _replicates(d2, w2, v2_rng)
  estimate = float((np.mean(a1) - np.mean(b1)) - (np.mean(a2) - np.mean(b2)))
  degenerate = bool(np.all(d1 == d1.flat[0]) and np.all(d2 == d2.flat[0]))
  return BootstrapTest(estimate, np.sort(replicates),
                       d1.shape[0] if paired_seeds else d1.shape[0] + d2.shape[0],
                       d1.shape[1] + d2.shape[1], degenerate=degenerate)


def accuracy_bootstrap(a, resamples: int = RESAMPLES, seed=0) -> BootstrapTest:
  """The bootstrap of one arm's mean accuracy over seeds and test images.

  Its `interval` is what `accuracy_interval` returns; its p-values test
  accuracy 0 and mean nothing.
  """
  _check_resamples(resamples)
  a = _correctness('a', a)
  seeds, examples = a.shape
  w_rng, v_rng = _generator(seed).spawn(2)
  w = _seed_counts(seeds, resamples, w_rng)
  # Draw on the errors (few columns when accuracy is high): mean(a) = 1 - mean(1 - a).
  replicates = 1.0 - _replicates(1 - a, w, v_rng)
  return BootstrapTest(float(np.mean(a)), np.sort(replicates), seeds, examples,
                       degenerate=bool(np.all(a == a.flat[0])))


def accuracy_interval(a, level: float = 0.95, resamples: int = RESAMPLES,
                      seed=0) -> tuple[float, float]:
  """The percentile interval at `level` of mean accuracy, seeds and test images resampled."""
  return accuracy_bootstrap(a, resamples, seed).interval(level)
