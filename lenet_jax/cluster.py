"""A sweep as a job array on a cluster, through submitit (`pip install -e .[slurm]`).

  python -m lenet_jax.cluster <run.py's flags> --workdir=DIR --num_shards=N
      [--cluster=slurm|local] [--partition=P] [--timeout_min=60] [--gpus_per_task=1]
      [--cpus_per_task=C] [--array_parallelism=K] [--logs=DIR] [--wait]

Submits one task per shard (`--num_shards`; task i runs `run.py`'s sweep with
`--shard_index=i`, in the task's own process) and then the merge: on SLURM a
job that starts once every task has ended (`afterany`) and runs `--merge`;
with `--wait` (the default for `--cluster=local`) this process waits for the
tasks and merges. Every task resumes what already finished in the workdir, so
submitting the same command again finishes an array that failed part way.

Signals, and how they agree with submitit's:
  * submitit asks SLURM to send SIGUSR2 `--signal_delay_s` (90) seconds before
    a task's time limit, and on preemption where the cluster is configured to
    warn (SlurmctldParameters=preempt_send_user_signal). A task adds SIGUSR2 to
    `workdir.STOP_SIGNALS`, so it is answered as SIGTERM is everywhere: the
    group in progress finishes its epoch, saves its checkpoint and stops.
    Then the task hands the signal to submitit's own handler, which calls
    `ShardTask.checkpoint` (the task itself, unchanged: its state is the
    workdir) and requeues it; the requeued task resumes from the checkpoint.
    An epoch must therefore fit in the warning time.
  * SIGTERM (scancel) and SIGINT stop the task after the epoch in progress,
    with a checkpoint, and it is not requeued; a second signal stops at once.
  * SIGUSR1 asks for a checkpoint and training goes on, as for run.py.
A task killed outright (SIGKILL, a node failure) loses at most the epochs since
its last checkpoint (`--checkpoint_every_secs`); submitting again resumes it.
"""
import signal
import sys
from collections.abc import Sequence

from absl import app
from absl import flags

from lenet_jax import cli
from lenet_jax import console
from lenet_jax import workdir as workdir_lib

# The scheduler's advance warning of a time limit or a preemption. submitit's
# default; it reads SUBMITIT_PREEMPT_SIGNAL to use another, and so does this.
PREEMPT_SIGNAL_DEFAULT = 'USR2'
CLUSTER_FLAGS = ('cluster', 'partition', 'timeout_min', 'gpus_per_task', 'cpus_per_task',
                 'array_parallelism', 'logs', 'wait', 'signal_delay_s')


def preempt_signal() -> signal.Signals:
  import os  # pylint: disable=import-outside-toplevel
  name = os.environ.get('SUBMITIT_PREEMPT_SIGNAL', PREEMPT_SIGNAL_DEFAULT)
  return getattr(signal, f'SIG{name}')


def _run_py(argv: Sequence[str]) -> int:
  """run.py's command line, in this process: the flags parsed, then cli.main."""
  if 'recipe' not in flags.FLAGS:
    cli.define_flags()
  cli.parse_flags(['run.py', *argv])
  try:
    return cli.main(['run.py'])
  except KeyboardInterrupt:  # a stop before training started: nothing to save
    return 130


def _submitit():
  try:
    import submitit  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError('python -m lenet_jax.cluster needs submitit: pip install -e .[slurm] '
                     '(or pip install submitit).') from None
  return submitit


class ShardTask:
  """One shard of the sweep, as a submitit job: `run.py argv --shard_index=i`.

  submitit's Checkpointable protocol: `checkpoint` returns the submission that
  resumes the task, which is the task itself, since what it has done is in the
  workdir (finished runs, and the group checkpoint the stop just saved).
  """

  def __init__(self, argv: Sequence[str]):
    self.argv = list(argv)

  def __call__(self) -> int:
    warning = preempt_signal()
    submitits = signal.getsignal(warning)  # checkpoints and requeues the task
    added = warning not in workdir_lib.STOP_SIGNALS
    if added:
      workdir_lib.STOP_SIGNALS.append(warning)
    signal.signal(warning, cli._interrupted)  # pylint: disable=protected-access
    workdir_lib.stops_seen.clear()
    try:
      status = _run_py(self.argv)
    finally:
      if added:
        workdir_lib.STOP_SIGNALS.remove(warning)
      signal.signal(warning, submitits)
    # Warned, whatever came after (SLURM's SIGTERM at the limit, when the epoch
    # did not fit in the warning time): the task is requeued.
    if status == 130 and warning in workdir_lib.stops_seen and callable(submitits):
      print(f'{signal.Signals(warning).name}: the epoch in progress was saved; asking '
            'submitit to requeue this task', flush=True)
      submitits(warning, None)  # calls self.checkpoint, requeues, and exits
    if status != 0:
      raise RuntimeError(f'run.py {" ".join(self.argv)} exited with status {status}')
    return status

  def checkpoint(self, *args, **kwargs):
    return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


def run_argv(argv: Sequence[str], fv: flags.FlagValues = flags.FLAGS) -> list[str]:
  """run.py's flags out of this command's: without the cluster's own (and the program)."""
  out = []
  for arg in argv[1:]:
    name = arg.lstrip('-').split('=', 1)[0]
    if arg.startswith('-') and (name in CLUSTER_FLAGS or (
        name.startswith('no') and name[2:] in CLUSTER_FLAGS)):
      if '=' not in arg and name in CLUSTER_FLAGS and fv[name].flag_type() != 'bool':
        raise ValueError(f'write --{name}=VALUE (with "="), so its value is not taken for '
                         'one of run.py\'s flags.')
      continue
    out.append(arg)
  return out


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  flags.DEFINE_enum('cluster', 'auto', ['auto', 'slurm', 'local'],
                    'Where the tasks run: slurm (sbatch), local (processes on this machine, '
                    "submitit's LocalExecutor), auto (slurm where sbatch exists).", flag_values=fv)
  flags.DEFINE_string('partition', None, 'SLURM partition.', flag_values=fv)
  flags.DEFINE_integer('timeout_min', 60, "Each task's time limit, in minutes.", flag_values=fv)
  flags.DEFINE_integer('gpus_per_task', 0, 'GPUs per task.', flag_values=fv)
  flags.DEFINE_integer('cpus_per_task', None, 'CPUs per task (default: the scheduler\'s).', flag_values=fv)
  flags.DEFINE_integer('array_parallelism', 256, 'Most tasks of the array running at once.', flag_values=fv)
  flags.DEFINE_integer('signal_delay_s', 90, 'Seconds before the time limit at which SLURM '
                       'warns a task (SIGUSR2), which saves its epoch and is requeued.', flag_values=fv)
  flags.DEFINE_string('logs', None, "submitit's folder for the tasks' pickles and logs "
                      '(default WORKDIR/cluster-logs).', flag_values=fv)
  flags.DEFINE_boolean('wait', None, 'Wait for the tasks here, then merge (default: yes '
                       'for --cluster=local; on SLURM a dependent job merges).', flag_values=fv)


def _check(fv) -> None:
  if not fv.workdir:
    raise ValueError('the tasks share a --workdir (where each writes its runs and the '
                     'merge finds them); give --workdir=DIR on a file system every node '
                     'mounts.')
  if fv['shard_index'].present:
    raise ValueError('--shard_index is chosen per task; give --num_shards (the number of '
                     'tasks) only.')
  if fv.num_shards < 1:
    raise ValueError(f'--num_shards={fv.num_shards} must be >= 1 (the number of tasks).')
  if fv.distributed:
    raise ValueError('--distributed joins processes that one job starts together; the '
                     'array\'s tasks are independent shards: leave it out here.')
  if fv.merge or fv.describe:
    raise ValueError('--merge and --describe run here, not on a cluster: use python run.py.')
  if fv.timeout_min < 1 or fv.array_parallelism < 1 or fv.gpus_per_task < 0:
    raise ValueError('--timeout_min and --array_parallelism must be >= 1 and '
                     '--gpus_per_task >= 0.')
  if fv.cluster == 'local' and fv.wait is False:
    raise ValueError('--cluster=local --nowait would merge before the tasks end (only SLURM '
                     'can start the merge after them); leave --wait on.')
  # run.py's own values, here: a mistake found by every queued task is found late.
  cli._check_run_flags()  # pylint: disable=protected-access
  from lenet_jax import sweep as sweep_lib  # pylint: disable=import-outside-toplevel
  sweep_lib.expand(cli.sweep_from_flags(fv))
  if fv.num_shards > 1 and cli.max_models_flag() == 'auto':
    raise ValueError('--max_models=auto is decided by each task from its own device memory, '
                     'and shards must group runs alike: give --max_models=N.')


def submit(argv: Sequence[str], fv=flags.FLAGS):
  """Submits the shards; returns (executor, jobs)."""
  import os  # pylint: disable=import-outside-toplevel
  submitit = _submitit()
  logs = fv.logs or os.path.join(fv.workdir, 'cluster-logs')
  cluster = None if fv.cluster == 'auto' else fv.cluster
  executor = submitit.AutoExecutor(folder=logs, cluster=cluster)
  params = {'timeout_min': fv.timeout_min, 'slurm_array_parallelism': fv.array_parallelism,
            'slurm_signal_delay_s': fv.signal_delay_s, 'name': 'lenet_jax'}
  if fv.partition:
    params['slurm_partition'] = fv.partition
  if fv.gpus_per_task:
    params['gpus_per_node'] = fv.gpus_per_task
  if fv.cpus_per_task:
    params['cpus_per_task'] = fv.cpus_per_task
  executor.update_parameters(**params)
  tasks = [ShardTask([*argv, f'--shard_index={i}']) for i in range(fv.num_shards)]
  with executor.batch():
    jobs = [executor.submit(task) for task in tasks]
  return executor, jobs


def main(argv) -> int:
  if cli.extra_arguments(argv):
    return 2
  try:
    _check(flags.FLAGS)
    argv = run_argv(sys.argv)  # absl gives main only what is not a flag
    executor, jobs = submit(argv)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except Exception as e:  # pylint: disable=broad-except  # sbatch refused (partition, quota)
    print(f'error: submitting the tasks failed ({type(e).__name__}: '
          f'{" ".join(str(e).split())[:400]}); nothing was submitted, or see squeue.',
          file=sys.stderr)
    return 1
  fv = flags.FLAGS
  print(f'submitted {len(jobs)} task(s) to {executor.cluster}: job {jobs[0].job_id.split("_")[0]}'
        f'; logs in {executor.folder if hasattr(executor, "folder") else fv.logs}', flush=True)
  wait = fv.wait if fv.wait is not None else executor.cluster != 'slurm'
  if not wait:
    array = jobs[0].job_id.split('_')[0]
    executor.update_parameters(slurm_additional_parameters={'dependency': f'afterany:{array}'},
                               timeout_min=30, gpus_per_node=0)
    try:
      merge = executor.submit(ShardTask([*argv, '--merge']))
    except Exception as e:  # pylint: disable=broad-except
      print(f'error: the tasks were submitted, but not the merge ({type(e).__name__}: '
            f'{" ".join(str(e).split())[:300]}); after them: python run.py '
            f'{" ".join(argv)} --merge', file=sys.stderr)
      return 1
    print(f'the merge runs as job {merge.job_id} once every task has ended; or, after '
          f'them: python run.py {" ".join(argv)} --merge', flush=True)
    return 0
  failed = []
  for job in jobs:
    try:
      job.result()
    except Exception as e:  # pylint: disable=broad-except
      failed.append(f'{job.job_id}: {str(e).strip().splitlines()[-1][:300]}')
  for line in failed:
    print(f'task failed: {line}', file=sys.stderr)
  del jobs  # now: submitit's LocalJob cleanup fails at interpreter exit
  fv.merge = True
  return cli.main(['run.py']) or (1 if failed else 0)


if __name__ == '__main__':
  console.install()
  cli.define_flags()
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=cli.parse_flags)
