"""The command line: one flag per config field, generated from the dataclasses.

Sweep syntax (also in --help):
  * A scalar field takes a comma-separated list; each value is a sweep point:
      --learning_rate=1e-3,3e-3 --activation=relu,sigmoid
  * A per-block field (channels, kernel_size, padding, convs_per_block) and
    dense take one whole value per flag, commas separating blocks; one number
    is used for every block. Repeat the flag to sweep:
      --channels=6,16 --channels=12,32 --kernel_size=3 --kernel_size=5
  * The sweep is the Cartesian product of all swept fields, times --seeds.
"""
import contextlib
import logging
import os
import signal
import sys

from absl import flags
from absl import logging as absl_logging

from lenet_jax import config as config_lib
from lenet_jax import workdir as workdir_lib
from lenet_jax.fields import FIELDS, flag_name, is_tuple_field, parse_values

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = FLAGS) -> None:
  for key, (_, help_text) in FIELDS.items():
    syntax = ('one value per flag, commas between blocks; repeat to sweep'
              if is_tuple_field(key) else 'comma-separated values are swept')
    flags.DEFINE_multi_string(flag_name(key), None, f'{help_text} [{key}; {syntax}]',
                              flag_values=fv)
  recipes = ', '.join(sorted(config_lib.RECIPES))
  cache = os.path.join(os.path.expanduser('~'), '.cache', 'lenet_jax', 'xla')
  flags.DEFINE_string('recipe', 'default', f'Base recipe the flags override: {recipes}.',
                      flag_values=fv)
  flags.DEFINE_integer('seeds', 1, 'Number of seeds per configuration.', flag_values=fv)
  flags.DEFINE_integer('first_seed', 0, 'Seeds are first_seed, first_seed+1, ...',
                       flag_values=fv)
  flags.DEFINE_string('workdir', None, 'Where each run writes its config and metrics, and '
                      'the sweep its results table. None: nothing is written.', flag_values=fv)
  flags.DEFINE_boolean('describe', False, 'Print the shape trace (output sizes, parameters, '
                       'multiply-adds, receptive field) and exit, without training.',
                       flag_values=fv)
  flags.DEFINE_string('max_models', 'auto', 'Most runs trained together in one compiled '
                      'program: a positive integer, or auto (8 on one CPU device; on a GPU/TPU '
                      'as many as half the free device memory holds, at most 1024; a resumed '
                      'workdir keeps the size it recorded).', flag_values=fv)
  flags.DEFINE_float('checkpoint_every_secs', 60.0, 'With --workdir: save each group of '
                     'runs when this many seconds have passed since its last save (0: every '
                     'epoch); always at the end of a group, on SIGUSR1, and on SIGINT/SIGTERM '
                     '(after the epoch in progress; a second signal stops at once).',
                     flag_values=fv)
  flags.DEFINE_enum('group_mode', 'auto', ['auto', 'vmap', 'in_turn'],
                    'How the runs of a group share their program: vmap (stacked, all at '
                    'once), in_turn (one after another, epoch by epoch), auto (in turn on '
                    'one CPU device, where it measured faster; vmap elsewhere).',
                    flag_values=fv)
  flags.DEFINE_float('target_test_acc', None, 'Stop each group of runs after the first '
                     'epoch whose test accuracy reaches this (time-to-accuracy benchmarks; '
                     'never use it for model selection).', flag_values=fv)
  flags.DEFINE_integer('num_shards', 1, 'Split the sweep into this many disjoint parts, '
                       'for independent processes (a SLURM array, say).', flag_values=fv)
  flags.DEFINE_integer('shard_index', 0, 'Which part this process runs, 0..num_shards-1.',
                       flag_values=fv)
  flags.DEFINE_boolean('merge', False, "Train nothing: gather the finished runs of the "
                       "sweep the flags describe (all shards) from --workdir into "
                       "results.csv, print the table, and list the runs that are missing.",
                       flag_values=fv)
  flags.DEFINE_boolean('tensorboard', True, 'Write TensorBoard event files for each run '
                       '(under --workdir).', flag_values=fv)
  flags.DEFINE_boolean('distributed', False, 'Several hosts, one process each (TPU pod '
                       'slices, multi-node GPU jobs): initialise jax.distributed and train '
                       'shard process_index of process_count on the local devices; process 0 '
                       'records the sweep and merges (docs/cluster.md). Needs --workdir and '
                       'an integer --max_models.', flag_values=fv)
  flags.DEFINE_string('cache_dir', cache,
                      "JAX's persistent compilation cache ('' disables it).", flag_values=fv)


def sweep_from_flags(fv: flags.FlagValues = FLAGS):
  """The Sweep the flags describe; raises ValueError with the offending flag."""
  from lenet_jax import sweep as sweep_lib  # pylint: disable=import-outside-toplevel
  base = config_lib.recipe(fv.recipe)
  axes = {}
  for key in FIELDS:
    given = fv[flag_name(key)].value
    if not given:
      continue
    values = parse_values(key, given)
    if len(values) == 1:
      base = config_lib.override(base, {key: values[0]})
    else:
      axes[key] = values
  if fv.seeds < 1:
    raise ValueError(f'--seeds={fv.seeds} must be >= 1.')
  seeds = tuple(range(fv.first_seed, fv.first_seed + fv.seeds))
  return sweep_lib.Sweep(base, axes, seeds)


def _merge(sweep, sweep_lib) -> int:
  if not FLAGS.workdir:
    print('error: --merge needs the --workdir the shards wrote to.', file=sys.stderr)
    return 2
  if not os.path.isdir(FLAGS.workdir):
    print(f'error: --workdir={FLAGS.workdir} does not exist, so there is nothing to merge; '
          'give the --workdir the shards wrote to.', file=sys.stderr)
    return 2
  try:
    rows, missing, unreadable = sweep_lib.merge(sweep, FLAGS.workdir)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(sweep_lib.summary_table(rows))
  print(f'\n{len(rows)} of {len(rows) + len(missing)} runs finished', end='')
  from lenet_jax import runs  # pylint: disable=import-outside-toplevel
  print(f'; results: {os.path.join(FLAGS.workdir, runs.RESULTS + ".csv")}' if rows else
        f'; none in {FLAGS.workdir}, so no results.csv was written', end='.\n')
  for message in unreadable:
    print(f'unreadable: {message}; run the sweep (or its shard) again to retrain it')
  for cfg in missing:
    print(f'missing: {sweep_lib.run_id(cfg)} (seed {cfg.seed})')
  return 1 if missing else 0


def _check_run_flags() -> None:
  """The flags that are not config fields; raises ValueError naming the bad one."""
  acc = FLAGS.target_test_acc
  if acc is not None and not 0 < acc <= 1:  # NaN fails this too
    raise ValueError(f'--target_test_acc={acc} must be an accuracy in (0, 1].')
  if FLAGS.num_shards != 1 and not FLAGS.workdir:
    raise ValueError(f'--num_shards={FLAGS.num_shards} splits a sweep over processes that '
                     'share one --workdir (where each writes its runs and --merge gathers '
                     'them); give --workdir=DIR.')
  if FLAGS.distributed and (not FLAGS.workdir or FLAGS['num_shards'].present
                            or FLAGS['shard_index'].present or FLAGS.merge):
    raise ValueError('--distributed splits the sweep over the processes by itself (shard '
                     'process_index of process_count) into one shared --workdir: give '
                     '--workdir=DIR, and neither --num_shards, --shard_index nor --merge.')
  if FLAGS.distributed and FLAGS.max_models.strip() == 'auto':
    raise ValueError('--distributed needs an integer --max_models: every process must '
                     'group the runs alike, and auto depends on each host\'s free memory.')
  every = FLAGS.checkpoint_every_secs
  if not every >= 0 or every == float('inf'):  # NaN fails this too
    raise ValueError(f'--checkpoint_every_secs={every} must be a finite number of seconds '
                     '>= 0 (0 saves after every epoch).')


def max_models_flag() -> int | str:
  """--max_models as 'auto' or a positive integer; ValueError naming the value."""
  text = FLAGS.max_models.strip()
  if text == 'auto':
    return text
  try:
    value = int(text)
  except ValueError:
    value = None
  if value is None or value < 1:
    raise ValueError(f'--max_models={text} must be a positive integer (the most runs '
                     'trained together in one program) or auto.')
  return value


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag a one-line error and exit status 2
  (absl's own parser exits 1 with its usage text)."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f'error: {e}. Run with --help to list the flags.', file=sys.stderr)
    sys.exit(2)


def quiet_logs() -> None:
  """JAX logs a failed TPU probe, and orbax every step of every checkpoint save,
  at INFO; neither is news. An explicit --verbosity shows them."""
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  if not FLAGS['verbosity'].present:
    absl_logging.set_verbosity(absl_logging.WARNING)


def _interrupted(signum, frame) -> None:
  del frame
  workdir_lib.last_stop['signal'] = signum
  workdir_lib.stops_seen.add(signum)
  raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_ctrl_c():
  """SIGTERM (a scheduler's stop, `kill`), and any other of workdir.STOP_SIGNALS,
  ends the work inside as Ctrl-C does.

  SIGUSR1 asks a training group for a checkpoint (workdir.stop_requests);
  outside a group's epochs there is nothing to checkpoint, and it is ignored
  rather than left to its default action, which ends the process.
  """
  previous = {s: signal.signal(s, _interrupted)
              for s in workdir_lib.STOP_SIGNALS if s != signal.SIGINT}
  previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
  try:
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def stopped(error: BaseException, workdir: str | None) -> int:
  """One line for work stopped by Ctrl-C or SIGTERM (exit 130) or by a full disk
  (exit 1), saying where every finished run is kept; the exit status."""
  if isinstance(error, KeyboardInterrupt):
    kept = ('every finished run is in {w} (under --distributed groups are not '
            'checkpointed: an interrupted one trains again from its first epoch)'
            if 'distributed' in FLAGS and FLAGS.distributed
            else 'every finished run and epoch checkpoint is in {w}')
    where = (f'; {kept.format(w=workdir)}: run the same command again to resume' if workdir
             else ' (no --workdir, so nothing was kept)')
    print(f'\ninterrupted{where}.', file=sys.stderr)
    return 130
  where = (f'Every run that finished is kept in {workdir}; free some space there and run '
           'the same command again to resume.' if workdir else 'Free some space.')
  print(f'error: {error.strerror}. {where}', file=sys.stderr)
  return 1


def extra_arguments(argv) -> bool:
  """Says so (one line) if absl left arguments that are not flags."""
  if len(argv) > 1:
    print(f'error: unexpected arguments {argv[1:]}; flags look like --name=value.',
          file=sys.stderr)
  return len(argv) > 1


def main(argv) -> int:
  """Runs what the flags ask for; returns the exit status."""
  # pylint: disable=import-outside-toplevel
  from lenet_jax import arch, runs, sweep as sweep_lib
  if extra_arguments(argv):
    return 2
  try:
    _check_run_flags()
    sweep = sweep_from_flags()
    configs = sweep_lib.expand(sweep)  # resolved and validated
    max_models = max_models_flag()
    sweep_lib.shard(configs, 1, FLAGS.num_shards, FLAGS.shard_index)  # the shard flags
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if FLAGS.merge:
    return _merge(sweep, sweep_lib)
  if FLAGS.describe:
    seen = set()
    for cfg in configs:
      model = cfg.model
      if model not in seen:
        seen.add(model)
        print(arch.describe(model), end='\n\n')
    return 0

  import jax
  from lenet_jax import loop  # pylint: disable=import-outside-toplevel
  quiet_logs()
  if FLAGS.distributed:
    from lenet_jax import multihost  # pylint: disable=import-outside-toplevel
    try:
      FLAGS.shard_index, FLAGS.num_shards = multihost.initialize()
    except ValueError as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
    print(f'process {FLAGS.shard_index} of {FLAGS.num_shards}: shard {FLAGS.shard_index}',
          flush=True)
  vmap = {'auto': None, 'vmap': True, 'in_turn': False}[FLAGS.group_mode]
  try:
    max_models = sweep_lib.resolve_max_models(max_models, configs, FLAGS.workdir,
                                              loop.resolve_vmap(vmap), FLAGS.num_shards)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if not FLAGS.distributed and not sweep_lib.shard(configs, max_models, FLAGS.num_shards,
                                                   FLAGS.shard_index):
    print(f'shard {FLAGS.shard_index} of {FLAGS.num_shards} has no runs: the sweep has '
          f'{len(sweep_lib.groups(configs, max_models))} group(s) of runs, fewer than '
          'the shards. Nothing to train; use fewer --num_shards.')
    return 0
  if FLAGS.cache_dir:
    jax.config.update('jax_compilation_cache_dir', FLAGS.cache_dir)
    # Every program, not only those that took over a second to compile: a sweep's
    # small ones (the vmapped initialisation, say) add up (docs/engine.md).
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  print(f'{len(configs)} run(s), JAX backend {jax.default_backend()}', flush=True)
  if FLAGS.max_models.strip() == 'auto':  # the group size decides stacked results: say it
    print(f'--max_models=auto: up to {max_models} runs per program', flush=True)

  def train() -> int:
    try:
      with sigterm_as_ctrl_c():
        rows = sweep_lib.run_sweep(sweep, FLAGS.workdir, max_models=max_models,
                                   progress=lambda line: print(line, flush=True),
                                   target_test_acc=FLAGS.target_test_acc,
                                   num_shards=FLAGS.num_shards, shard_index=FLAGS.shard_index,
                                   tensorboard=FLAGS.tensorboard, vmap=vmap,
                                   checkpoint_every=FLAGS.checkpoint_every_secs)
    except ValueError as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
    except (workdir_lib.DiskFull, KeyboardInterrupt) as e:
      return stopped(e, FLAGS.workdir)
    print()
    print(sweep_lib.summary_table(rows))
    if len(rows) == 1:
      r = rows[0]
      print(f"\nstatus {r['status']}; validation accuracy {r['val_acc']}; "
            f"test accuracy {r['test_acc']}")
    if FLAGS.workdir and rows:
      name = runs.results_name(FLAGS.num_shards, FLAGS.shard_index)
      print(f'\nresults: {os.path.join(FLAGS.workdir, name + ".csv")}')
    return 0

  if FLAGS.distributed:
    return _distributed(sweep, sweep_lib, loop.resolve_vmap(vmap), max_models, train)
  return train()


def _distributed(sweep, sweep_lib, stacked: bool, max_models: int, train) -> int:
  """--distributed: process 0 records the sweep in the workdir before the others
  start (they find it there and check that it is theirs); every process trains
  its shard; once all have ended, however they ended, process 0 merges."""
  from lenet_jax import multihost, runs  # pylint: disable=import-outside-toplevel
  claimed = None
  if FLAGS.shard_index == 0:
    try:
      runs.check_writable(FLAGS.workdir)
      runs.claim_workdir(FLAGS.workdir, sweep_lib.describe(sweep),
                         runs.execution(stacked, max_models))
    except BaseException as e:  # pylint: disable=broad-except  # the others wait: reach them
      claimed = e
  multihost.barrier('claimed')  # the others wait here, even when the claim failed
  status = None
  if isinstance(claimed, ValueError):
    print(f'error: {claimed}', file=sys.stderr)
    status = 2
  elif isinstance(claimed, (workdir_lib.DiskFull, KeyboardInterrupt)):
    status = stopped(claimed, FLAGS.workdir)
  elif claimed is not None:
    raise claimed
  try:
    if status is None:
      status = train()  # the others, refused as process 0 was, end with status 2 too
  finally:
    multihost.barrier('trained')  # however this process ended: none waits forever
  if FLAGS.shard_index == 0 and status == 0:  # one process writes the sweep's results
    print('\nevery process has finished; the whole sweep:')
    return _merge(sweep, sweep_lib)
  return status
