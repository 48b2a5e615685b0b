"""Seconds for one group checkpoint save of N default LeNet-5 runs.

  .venv/bin/python benchmarks/checkpoint_cost.py [N ...]   (default: 1 8 64)

One orbax checkpoint holds every member of a group (checkpoint.GroupCheckpoints),
so a save costs about the same whether the group has 1 run or 64; the figures
are in docs/engine.md. Best of 3 saves each.
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=wrong-import-position

from lenet_jax import checkpoint, config, loop, sweep, train  # pylint: disable=wrong-import-position


def main(counts):
  cfg = sweep.resolve(config.default())
  program = loop._program_for(cfg, steps=429)  # pylint: disable=protected-access
  print(f'backend {jax.default_backend()}, {os.cpu_count()} CPUs')
  for n in counts:
    states, _ = loop._initial_states(program, [cfg] * n, n)  # pylint: disable=protected-access
    arrays = {'state': checkpoint.state_arrays(states),
              'best': jax.vmap(train.initial_best)(states)}
    with tempfile.TemporaryDirectory() as directory:
      saver = checkpoint.GroupCheckpoints(directory, [str(i) for i in range(n)])
      times = []
      for epoch in range(1, 4):
        start = time.perf_counter()
        saver.save(arrays, [epoch] * n,
                   [[{'epoch': k + 1} for k in range(epoch)] for _ in range(n)])
        times.append(time.perf_counter() - start)
      saver.close()
    print(f'{n} runs: one group save {min(times):.3f} s (best of 3: '
          f'{", ".join(f"{t:.3f}" for t in times)})')


if __name__ == '__main__':
  main([int(a) for a in sys.argv[1:]] or [1, 8, 64])
