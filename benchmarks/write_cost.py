"""Milliseconds to write a finished run's files, one run after another and 8 at once.

  .venv/bin/python benchmarks/write_cost.py

16 tiny runs (the test suite's synthetic data) trained for 15 epochs, then
written with `runs.write_run` in a loop and with `runs.write_runs` (threads),
with and without TensorBoard files (docs/engine.md has the figures).
"""
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, 'tests')]
import conftest  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
from test_train import tiny_config, tiny_dataset  # pylint: disable=wrong-import-position

from lenet_jax import loop, runs  # pylint: disable=wrong-import-position


def main():
  results = loop.train_group([tiny_config(epochs=15, seed=s) for s in range(16)],
                             tiny_dataset(n_train=256))
  for tensorboard in (False, True):
    for how in ('one after another', f'{runs.WRITER_THREADS} threads'):
      with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        if how == 'one after another':
          for res in results:
            runs.write_run(workdir, res, tensorboard=tensorboard, models=True)
        else:
          runs.write_runs(workdir, results, tensorboard=tensorboard)
        ms = (time.perf_counter() - start) / len(results) * 1000
      print(f'tensorboard={tensorboard}, {how}: {ms:.1f} ms a run')


if __name__ == '__main__':
  main()
