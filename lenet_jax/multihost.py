"""One sweep over several hosts (TPU pod slices, multi-node GPU jobs), one process each.

The models of a sweep are independent, so no collective runs between hosts:
each process trains its share of the sweep's groups on its own local devices,
exactly as shard `jax.process_index()` of `jax.process_count()` would
(`run.py --distributed`). What the processes share is the work directory:
process 0 alone records the sweep there (sweep.json) before the others start,
and alone merges every process's runs into results.* once all have ended;
each process writes only its own runs and shard files, and every process
resumes the runs it had finished. Groups are not checkpointed here (orbax
coordinates each save across all the processes, which train different
groups), so a group that was interrupted trains again from its first epoch.

`jax.distributed.initialize()` runs only with --distributed, never by default.
Its coordinator and process ids come from the platform where JAX detects one
(SLURM, TPU, ...), or from $LENET_JAX_COORDINATOR (host:port),
$LENET_JAX_NUM_PROCESSES and $LENET_JAX_PROCESS_ID.
"""
import os

COORDINATOR_ENV = 'LENET_JAX_COORDINATOR'
NUM_PROCESSES_ENV = 'LENET_JAX_NUM_PROCESSES'
PROCESS_ID_ENV = 'LENET_JAX_PROCESS_ID'


def initialize() -> tuple[int, int]:
  """Starts jax.distributed; returns (this process's index, the number of processes)."""
  import jax  # pylint: disable=import-outside-toplevel
  given = {name: os.environ.get(env) for name, env in (
      ('coordinator_address', COORDINATOR_ENV), ('num_processes', NUM_PROCESSES_ENV),
      ('process_id', PROCESS_ID_ENV))}
  if any(given.values()) and not all(given.values()):
    raise ValueError(f'${COORDINATOR_ENV}, ${NUM_PROCESSES_ENV} and ${PROCESS_ID_ENV} go '
                     f'together; set all three, or none where the platform tells JAX '
                     f'(got {", ".join(k for k, v in given.items() if v)}).')
  kwargs = {}
  if all(given.values()):
    try:
      kwargs = {'coordinator_address': given['coordinator_address'],
                'num_processes': int(given['num_processes']),
                'process_id': int(given['process_id'])}
    except ValueError:
      raise ValueError(f'${NUM_PROCESSES_ENV}={given["num_processes"]!r} and '
                       f'${PROCESS_ID_ENV}={given["process_id"]!r} must be integers.') from None
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, RuntimeError) as e:
    raise ValueError(f'--distributed: jax.distributed.initialize() failed '
                     f'({" ".join(str(e).split())[:300]}); on a platform JAX does not '
                     f'detect, set ${COORDINATOR_ENV}, ${NUM_PROCESSES_ENV} and '
                     f'${PROCESS_ID_ENV}.') from None
  return jax.process_index(), jax.process_count()


def barrier(name: str) -> None:
  """Waits until every process has reached `name`."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  multihost_utils.sync_global_devices(f'lenet_jax {name}')
