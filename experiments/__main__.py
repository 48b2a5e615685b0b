"""Runs or resumes one experiment; writes its report once every run has finished:

  python -m experiments channel_growth                     # -> experiments/results/channel_growth/
  python -m experiments channel_growth --max_minutes=50    # stop after ~50 min; rerun to continue
  python -m experiments channel_growth --patience=10       # budget check -> channel_growth-patience10/
  python -m experiments channel_growth --dataset=animal_mnist  # other-data check -> channel_growth-animal_mnist/
  python -m experiments channel_growth --quick             # a pipeline check -> channel_growth-quick/
  python -m experiments channel_growth --preregister       # writes experiments/preregistration/channel_growth.md
  python -m experiments study --max_minutes=50             # every experiment, then every check, in turn

`study` runs the training experiments cheapest first, then their budget checks,
then their other-data checks, within one --max_minutes budget; a finished one is
only re-reported, so the same command continues where the last one stopped. Once
every check has finished, the experiments' reports are written again with them.
"""
import importlib
import os
import sys
import time

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


# The training experiments, cheapest first (runs x their cost), as `study` runs them.
STUDY = ('learned_kernels', 'even_kernels', 'small_kernels', 'channel_growth',
         'channels_vs_kernel', 'claims')


def _run(name: str, patience: int | None, dataset: str | None, max_minutes: float | None,
         command: str) -> int | runner.RunStatus:
  """One experiment or check; its status, or the exit status of a failure."""
  module = importlib.import_module(f'experiments.{name}')
  workdir = FLAGS.workdir or default_workdir(name, patience, dataset, FLAGS.quick)
  overrides = {}
  if dataset:
    overrides['data.dataset'] = dataset
  if FLAGS.idx_dir:
    overrides['data.idx_dir'] = FLAGS.idx_dir
  try:
    with cli.sigterm_as_ctrl_c():  # a scheduler's stop = Ctrl-C
      status = runner.run(module, workdir, FLAGS.quick, overrides, command, patience=patience,
                          check=bool(patience or dataset), max_minutes=max_minutes)
  except (ValueError, workdir_lib.Locked) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except (workdir_lib.DiskFull, KeyboardInterrupt) as e:
    return cli.stopped(e, workdir)
  if status.complete:
    print(f'report: {os.path.join(workdir, "report.md")}')
  return status


def study(command: str) -> int:
  """Every experiment of STUDY, then each one's checks, within --max_minutes in all."""
  if FLAGS.workdir or FLAGS.patience or FLAGS.dataset or FLAGS.preregister:
    print('error: study runs every experiment and check in its default workdir; drop '
          '--workdir, --patience, --dataset and --preregister.', file=sys.stderr)
    return 2
  start = time.monotonic()
  steps = ([(name, None, None) for name in STUDY]
           + [(name, protocol.CHECK_PATIENCE, None) for name in STUDY]
           + [(name, None, protocol.CHECK_DATASET) for name in STUDY])
  for name, patience, dataset in steps:
    left = (None if FLAGS.max_minutes is None
            else FLAGS.max_minutes - (time.monotonic() - start) / 60)
    if left is not None and left <= 0:
      print(f'study: out of time before {name}; run the same command again to continue')
      return 0
    print(f'study: {name}' + (f' --patience={patience}' if patience else '')
          + (f' --dataset={dataset}' if dataset else ''))
    status = _run(name, patience, dataset, left, command)
    if isinstance(status, int):
      return status
    if not status.complete:
      return 0  # stopped by --max_minutes: the same command continues
  for name in STUDY:  # their reports again, now that their checks exist
    status = _run(name, None, None, None, command)
    if isinstance(status, int):
      return status
  print('study: every experiment and check has finished; `python -m experiments.answers` '
        'writes the README table from them')
  return 0


def main(argv):
  command = 'python -m experiments ' + ' '.join(sys.argv[1:])
  if len(argv) == 2 and argv[1] == 'study':
    if FLAGS.max_minutes is not None and not FLAGS.max_minutes >= 0:
      print(f'error: --max_minutes={FLAGS.max_minutes} must be >= 0.', file=sys.stderr)
      return 2
    cli.quiet_logs()
    return study(command)
  if len(argv) != 2 or argv[1] not in EXPERIMENTS:
    print(f'usage: python -m experiments NAME [--quick] [--max_minutes=N] [--patience=N] '
          f'[--dataset=D] [--preregister]; NAME is one of {", ".join(EXPERIMENTS)}, or study '
          f'(got {argv[1:]}).', file=sys.stderr)
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
  cli.quiet_logs()
  status = _run(name, FLAGS.patience, FLAGS.dataset, FLAGS.max_minutes, command)
  return status if isinstance(status, int) else 0


if __name__ == '__main__':
  console.install()  # dependency warnings: once each, one line
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=cli.parse_flags)
