"""Runs or resumes one experiment; writes its report once every run has finished:

  python -m experiments channel_growth                     # -> experiments/results/channel_growth/
  python -m experiments channel_growth --max_minutes=50    # stop after ~50 min; rerun to continue
  python -m experiments channel_growth --patience=10       # budget check -> channel_growth-patience10/
  python -m experiments channel_growth --dataset=animal_mnist  # other-data check -> channel_growth-animal_mnist/
  python -m experiments channel_growth --quick             # a pipeline check -> channel_growth-quick/
  python -m experiments channel_growth --preregister       # writes experiments/preregistration/channel_growth.md
"""
import importlib
import os
import sys

from absl import app
from absl import flags

from experiments import EXPERIMENTS
from experiments import preregistration
from experiments import protocol
from experiments import runner
from lenet_jax import cli
from lenet_jax import console
from lenet_jax import workdir as workdir_lib

flags.DEFINE_boolean('quick', False, 'A pipeline check: 1 epoch on 2,048 examples, 1 tuning '
                     'and 2 reported seeds, 2 rates, 3 arms.')
flags.DEFINE_boolean('preregister', False, 'Write the experiment\'s pre-registration '
                     '(experiments/preregistration/NAME.md) from its module, to commit before '
                     'its first run; trains nothing.')
flags.DEFINE_string('workdir', None, 'Where the runs and report.md go (default '
                    'experiments/results/NAME, with -patienceN, -DATASET or -quick appended '
                    'for --patience, --dataset and --quick).')
flags.DEFINE_integer('patience', None, 'The budget check: train only the arms of the primary '
                     'comparisons, stopping after this many epochs without a better validation '
                     f'accuracy (the study checks {protocol.CHECK_PATIENCE}).')
flags.DEFINE_string('dataset', None, 'The other-data check: train only the arms of the primary '
                    f'comparisons on this dataset (the study checks {protocol.CHECK_DATASET}).')
flags.DEFINE_string('idx_dir', None, 'A directory of IDX files for the dataset.')
flags.DEFINE_float('max_minutes', None, 'Stop after the group in progress once this many '
                   'minutes have passed; the same command continues where it stopped.')
FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.abspath(__file__))


def default_workdir(name: str, patience: int | None, dataset: str | None, quick: bool) -> str:
  suffix = (f'-patience{patience}' if patience else '') + (f'-{dataset}' if dataset else '')
  return os.path.join(ROOT, 'results', name + suffix + ('-quick' if quick else ''))


def main(argv):
  if len(argv) != 2 or argv[1] not in EXPERIMENTS:
    print(f'usage: python -m experiments NAME [--quick] [--max_minutes=N] [--patience=N] '
          f'[--dataset=D] [--preregister]; NAME is one of {", ".join(EXPERIMENTS)} (got {argv[1:]}).',
          file=sys.stderr)
    return 2
  if FLAGS.max_minutes is not None and not FLAGS.max_minutes >= 0:
    print(f'error: --max_minutes={FLAGS.max_minutes} must be >= 0.', file=sys.stderr)
    return 2
  if FLAGS.patience is not None and FLAGS.patience < 1:
    print(f'error: --patience={FLAGS.patience} must be >= 1.', file=sys.stderr)
    return 2
  name = argv[1]
  module = importlib.import_module(f'experiments.{name}')
  if FLAGS.preregister:
    if not module.TRAINS:
      print(f'error: {name} trains nothing, so it has nothing to pre-register.', file=sys.stderr)
      return 2
    print(f'wrote {preregistration.write(module)}; review it and commit it before the first run')
    return 0
  workdir = FLAGS.workdir or default_workdir(name, FLAGS.patience, FLAGS.dataset, FLAGS.quick)
  overrides = {}
  if FLAGS.dataset:
    overrides['data.dataset'] = FLAGS.dataset
  if FLAGS.idx_dir:
    overrides['data.idx_dir'] = FLAGS.idx_dir
  command = 'python -m experiments ' + ' '.join(sys.argv[1:])
  cli.quiet_logs()
  try:
    with cli.sigterm_as_ctrl_c():  # a scheduler's stop = Ctrl-C
      status = runner.run(module, workdir, FLAGS.quick, overrides, command,
                          patience=FLAGS.patience, check=bool(FLAGS.patience or FLAGS.dataset),
                          max_minutes=FLAGS.max_minutes)
  except (ValueError, workdir_lib.Locked) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except (workdir_lib.DiskFull, KeyboardInterrupt) as e:
    return cli.stopped(e, workdir)
  if status.complete:
    print(f'report: {os.path.join(workdir, "report.md")}')
  return 0


if __name__ == '__main__':
  console.install()  # dependency warnings: once each, one line
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=cli.parse_flags)
