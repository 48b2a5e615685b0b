"""Checkpoints of a group of runs with orbax: one checkpoint holds every member.

A group (runs of one architecture trained together, see loop.py) is saved as
one orbax checkpoint: each leaf of the members' train states stacked along a
leading run axis, their best-on-validation models, and as JSON the run ids,
the epochs each member has done and each member's metrics so far. One save
per group, not per run, is what keeps checkpoints cheap when hundreds of runs
train together; the training loop saves on a time cadence, at the end, and
when asked to stop (see loop.train_group).

A run's data order is a function of its seed and the epoch number
(`fold_in(data_key, epoch)`), so the state at the end of an epoch is all a
resumed run needs to continue exactly as it would have: on the CPU the final
parameters are bitwise those of an uninterrupted run. Orbax writes each
checkpoint to a temporary directory and renames it when complete, so a kill
at any instant leaves the previous checkpoints intact; a checkpoint that is
there but cannot be read, or whose contents do not fit together, is reported
and moved aside (`<step>.unreadable-<time>`), and the one before it is used.

Steps are numbered by the epochs done, summed over the members, so they grow
with every save.
"""
import logging
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from lenet_jax import workdir

# The two newest are kept: enough to fall back past one bad checkpoint.
KEEP = 2


def state_arrays(state) -> dict[str, Any]:
  """The parts of a TrainState that change during training (no functions), and its key."""
  arrays = {'step': state.step, 'params': state.params, 'opt_state': state.opt_state,
            'model_state': state.model_state}
  if getattr(state, 'key', None) is not None:  # the root of the dropout keys
    arrays['key'] = state.key
  return arrays


def _nbytes(leaf) -> int:
  """Bytes of one leaf; a typed PRNG key (the state's `key`) counts its key data."""
  if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.random.key_data(leaf)
  return np.asarray(leaf).nbytes


class Inconsistent(ValueError):
  """A checkpoint that was read but does not describe the group it is in."""


class GroupCheckpoints:
  """The checkpoints of one group of runs, in `directory`."""

  def __init__(self, directory: str, run_ids: list[str]):
    self.directory = os.path.abspath(directory)
    self.run_ids = list(run_ids)
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=KEEP, enable_async_checkpointing=False, create=True,
            # a kill during a save leaves a temporary directory; the next process
            # (which holds the workdir's lock) removes it
            cleanup_tmp_directories=True))

  def save(self, arrays, epochs_done: list[int], histories: list[list[dict[str, Any]]]) -> None:
    """Saves the group: `arrays` ({'state', 'best'}, stacked over the members).

    SIGINT/SIGTERM that arrive meanwhile take effect once it is whole.
    """
    meta = {'run_ids': self.run_ids, 'epochs_done': list(epochs_done),
            'histories': histories}
    step = sum(epochs_done)
    # The arrays, orbax's metadata and the histories, with room to spare.
    needed = (2 * sum(_nbytes(x) for x in jax.tree.leaves(arrays)) + 64 * 1024
              + 512 * sum(len(h) for h in histories))
    workdir.require_space(self.directory, needed)
    with workdir.deferred_signals():
      try:
        if step in self._manager.all_steps():  # saved at this point already
          return
        self._manager.save(step, args=ocp.args.Composite(
            arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()
      except Exception as e:  # pylint: disable=broad-except
        workdir.raise_if_disk_full(e, os.path.join(self.directory, str(step)))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def restore(self, step: int, target):
    """(arrays, epochs_done, histories) of this group's runs saved at `step`.

    `target` ({'state', 'best'}, stacked over this group's runs) gives the
    structure. The checkpoint may hold more runs than the group has now (those
    that have finished since are left out of a resumed group); it is read
    whole and this group's rows taken. Raises Inconsistent when it lacks one
    of the runs, or its epoch counts and metrics disagree.
    """
    meta = self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']
    saved = meta.get('run_ids')
    if not isinstance(saved, list) or not set(self.run_ids) <= set(saved):
      raise Inconsistent(f'it holds runs {saved}, not all of {self.run_ids}')
    done, histories = meta.get('epochs_done'), meta.get('histories')
    if (not isinstance(done, list) or not isinstance(histories, list)
        or len(done) != len(saved) or len(histories) != len(saved) or sum(done) != step):
      raise Inconsistent(f'its epoch counts {done} do not fit its {len(saved)} runs '
                         f'and step {step}')
    for run, epochs, history in zip(saved, done, histories):
      if len(history) != epochs or [h.get('epoch') for h in history] != list(
          range(1, epochs + 1)):
        raise Inconsistent(f'run {run} has done {epochs} epochs but holds metrics of '
                           f'{len(history)}')
    whole = jax.tree.map(lambda x: jax.ShapeDtypeStruct((len(saved),) + x.shape[1:], x.dtype),
                         target)
    arrays = self._manager.restore(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore(whole)))['arrays']
    rows = np.asarray([saved.index(r) for r in self.run_ids])
    arrays = jax.tree.map(lambda x: x[rows], arrays)
    return arrays, [done[i] for i in rows], [histories[i] for i in rows]

  def restore_latest(self, target):
    """(arrays, epochs_done, histories) of the newest usable checkpoint, or None.

    A checkpoint that fails to restore or does not fit together is reported,
    removed, and the previous one tried, so a damaged file costs at most the
    training since the checkpoint before it.
    """
    for step in reversed(self.steps()):
      try:
        return self.restore(step, target)
      except Exception as e:  # pylint: disable=broad-except
        what = 'does not fit its group' if isinstance(e, Inconsistent) else 'is corrupt or incomplete'
        # Moved aside, not deleted: a failure that was not the files' (an
        # out-of-memory device, a flaky network disk) loses no checkpoint.
        aside = os.path.join(self.directory, f'{step}.unreadable-{time.strftime("%Y%m%d-%H%M%S")}')
        message = (f'checkpoint {self.directory}/{step} {what} ({type(e).__name__}: '
                   f'{str(e)[:200]}); moved it to {aside} and using the one before')
        logging.warning(message)
        print(f'warning: {message}', flush=True)
        os.replace(os.path.join(self.directory, str(step)), aside)
        self._manager.reload()
    return None

  def close(self) -> None:
    self._manager.close()
