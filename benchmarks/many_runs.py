"""1,024 runs (512 seeds x 2 learning rates) of a tiny LeNet in one stacked program.

  .venv/bin/python benchmarks/many_runs.py

A check that a group of a thousand runs builds, compiles once and trains
(docs/engine.md has the figures). The data are the test suite's synthetic
separable images (tests/conftest.py), not a real dataset: this measures the
engine, not accuracy.
"""
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'tests')]
import conftest  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
from test_train import tiny_config, tiny_dataset  # pylint: disable=wrong-import-position

from lenet_jax import loop, sweep  # pylint: disable=wrong-import-position


def main():
  dataset = tiny_dataset(n_train=256)
  configs = [tiny_config(epochs=2, seed=s, **{'optim.learning_rate': lr})
             for lr in (1e-3, 3e-3) for s in range(512)]
  groups = sweep.groups(configs, 1024)
  print(f'{len(configs)} runs in groups of {[len(g) for g in groups]}')
  start = time.perf_counter()
  results = loop.train_group(groups[0], dataset, vmap=True, keep_params=False, say=print)
  print(f'{len(results)} runs, 2 epochs each, trained in {time.perf_counter() - start:.1f} s '
        f'(compilation included); statuses {sorted({r.status for r in results})}')


if __name__ == '__main__':
  main()
