"""Runs one experiment and writes its report:

  python -m experiments channel_growth            # full mode, into experiments/results/
  python -m experiments channel_growth --quick    # about a minute, into experiments/results/<name>-quick
"""
import importlib
import os
import sys

from absl import app
from absl import flags

from experiments import EXPERIMENTS, common
from lenet_jax import cli

flags.DEFINE_boolean('quick', False, 'About a minute: 1 epoch on 2,048 examples, 2 seeds.')
flags.DEFINE_string('workdir', None, 'Where the runs and report.md go '
                    '(default experiments/results/NAME, or NAME-quick with --quick).')
flags.DEFINE_string('dataset', None, 'Override the dataset (default fashion_mnist).')
flags.DEFINE_string('idx_dir', None, 'A directory of IDX files for the dataset.')
FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.abspath(__file__))


def main(argv):
  if len(argv) != 2 or argv[1] not in EXPERIMENTS:
    print(f'usage: python -m experiments NAME [--quick]; NAME is one of '
          f'{", ".join(EXPERIMENTS)} (got {argv[1:]}).', file=sys.stderr)
    return 2
  name = argv[1]
  module = importlib.import_module(f'experiments.{name}')
  workdir = FLAGS.workdir or os.path.join(ROOT, 'results', name + ('-quick' if FLAGS.quick else ''))
  overrides = {}
  if FLAGS.dataset:
    overrides['data.dataset'] = FLAGS.dataset
  if FLAGS.idx_dir:
    overrides['data.idx_dir'] = FLAGS.idx_dir
  command = 'python -m experiments ' + ' '.join(sys.argv[1:])
  try:
    common.run(module, workdir, FLAGS.quick, overrides, command)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'report: {os.path.join(workdir, "report.md")}')
  return 0


if __name__ == '__main__':
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=cli.parse_flags)
