"""The report's figures: learning curves over seeds and a forest plot of differences.

Each function takes plain data and a path, writes one PNG with matplotlib's
Agg backend (imported here, so that importing the report's library stays
cheap), and returns the path.
"""
import math
from collections.abc import Sequence


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def learning_curves(series: dict[str, Sequence[Sequence[float]]], path: str,
                    ylabel: str = 'validation accuracy') -> str:
  """Per label, the mean over runs of a per-epoch metric and a +-1 std band.

  `series` maps a configuration's label to one sequence per run (epoch 1
  first). Runs may stop at different epochs; each epoch averages the runs
  that reached it.
  """
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  colors = plt.get_cmap('tab10' if len(series) <= 10 else 'tab20').colors
  for i, (label, runs) in enumerate(series.items()):
    epochs = max((len(r) for r in runs), default=0)
    xs, means, stds = [], [], []
    for e in range(epochs):
      values = [r[e] for r in runs if len(r) > e and math.isfinite(r[e])]
      if not values:
        continue
      mean = sum(values) / len(values)
      std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
             if len(values) > 1 else 0.0)
      xs.append(e + 1)
      means.append(mean)
      stds.append(std)
    color = colors[i % len(colors)]
    ax.plot(xs, means, marker='o', markersize=3, color=color, label=f'{label} ({len(runs)} runs)')
    ax.fill_between(xs, [m - s for m, s in zip(means, stds)],
                    [m + s for m, s in zip(means, stds)], color=color, alpha=0.2, linewidth=0)
  ax.set_xlabel('epoch')
  ax.set_ylabel(f'{ylabel} (mean ± 1 std over seeds)')
  ax.xaxis.get_major_locator().set_params(integer=True)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))  # never over a curve
  fig.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(fig)
  return path


# Beyond this many margins the axis turns logarithmic, so one large effect does not
# squeeze every interval near the margin into a dot.
LINEAR_SPAN_IN_MARGINS = 20


def forest_linear_range(intervals: Sequence[tuple[float, float]], margin: float) -> float | None:
  """Half-width of the linear part of a forest plot's axis; None: linear throughout.

  When an interval reaches further than LINEAR_SPAN_IN_MARGINS margins from zero,
  the axis is linear within +-4 margins (the margin band and the intervals near it
  stay readable) and logarithmic beyond.
  """
  reach = max((abs(x) for iv in intervals for x in iv if math.isfinite(x)), default=0.0)
  if margin <= 0 or reach <= LINEAR_SPAN_IN_MARGINS * margin:
    return None
  return 4 * margin


def forest(labels: Sequence[str], estimates: Sequence[float],
           intervals: Sequence[tuple[float, float]], notes: Sequence[str], margin: float,
           path: str, xlabel: str, title: str) -> str:
  """One row per comparison: the estimate, its interval, the note on the right, +-margin shaded.

  The figure grows with the number of rows, so labels never overlap.
  """
  plt = _pyplot()
  n = len(labels)
  fig, ax = plt.subplots(figsize=(8.0, 1.5 + 0.42 * n))
  ys = list(range(n, 0, -1))  # the first comparison on top
  ax.axvspan(-margin, margin, color='tab:green', alpha=0.15)
  ax.axvline(0, color='black', linewidth=0.8)
  lo = [e - iv[0] for e, iv in zip(estimates, intervals)]
  hi = [iv[1] - e for e, iv in zip(estimates, intervals)]
  ax.errorbar(estimates, ys, xerr=[lo, hi], fmt='o', color='tab:blue', capsize=4)
  ax.set_yticks(ys)
  ax.set_yticklabels(labels, fontsize=8)
  ax.set_ylim(0.4, n + 0.6)
  right = ax.twinx()
  right.set_ylim(ax.get_ylim())
  right.set_yticks(ys)
  right.set_yticklabels(notes, fontsize=8)
  linear = forest_linear_range(intervals, margin)
  if linear is not None:
    ax.set_xscale('symlog', linthresh=linear)
    xlabel = f'{xlabel}\n(linear within ±{linear:g}, logarithmic beyond)'
  ax.set_xlabel(xlabel)
  ax.set_title(f'{title}\ndots and bars: mean difference and its interval; shaded: the '
               f'equivalence margin ±{margin:g}', fontsize=9)
  ax.grid(axis='x', alpha=0.3)
  fig.savefig(path, dpi=120, bbox_inches='tight')
  plt.close(fig)
  return path
