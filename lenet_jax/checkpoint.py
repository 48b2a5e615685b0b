"""Per-run checkpoints with orbax: the train state and the metrics so far, every epoch.

A run's data order is a function of its seed and the epoch number
(`fold_in(data_key, epoch)`), so the state at the end of an epoch is all a
resumed run needs to continue exactly as it would have: on the CPU the final
parameters are bitwise those of an uninterrupted run. Orbax writes each
checkpoint to a temporary directory and renames it when complete, so a kill
at any instant leaves the previous checkpoints intact; a checkpoint that is
there but cannot be read is reported and skipped for the one before it.
"""
import logging
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from lenet_jax import workdir

# The two newest are kept: enough to fall back past one bad checkpoint.
KEEP = 2


def _arrays(state) -> dict[str, Any]:
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


class RunCheckpoints:
  """The checkpoints of one run, in `directory`, one per completed epoch."""

  def __init__(self, directory: str):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=KEEP, enable_async_checkpointing=False, create=True,
            # a kill during a save leaves a temporary directory; the next process
            # (which holds the workdir's lock) removes it
            cleanup_tmp_directories=True))

  def save(self, epochs_done: int, state, history: list[dict[str, Any]]) -> None:
    """Saves the state after `epochs_done` epochs; SIGINT/SIGTERM wait until it is whole."""
    arrays = _arrays(state)
    # The arrays, orbax's metadata and the history, with room to spare.
    needed = (2 * sum(_nbytes(x) for x in jax.tree.leaves(arrays)) + 64 * 1024
              + 512 * len(history))
    workdir.require_space(self.directory, needed)
    with workdir.deferred_signals():
      try:
        self._manager.save(epochs_done, args=ocp.args.Composite(
            state=ocp.args.StandardSave(arrays),
            history=ocp.args.JsonSave(history)), force=True)
        self._manager.wait_until_finished()
      except Exception as e:  # pylint: disable=broad-except
        workdir.raise_if_disk_full(e, os.path.join(self.directory, str(epochs_done)))

  def delete_after(self, epochs_done: int) -> None:
    """Deletes the checkpoints of epochs after `epochs_done` (a resume point)."""
    for step in self.epochs():
      if step > epochs_done:
        self._manager.delete(step)

  def epochs(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def restore(self, epochs_done: int, state):
    """(state, history) saved after `epochs_done` epochs; `state` gives the structure."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _arrays(state))
    restored = self._manager.restore(epochs_done, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), history=ocp.args.JsonRestore()))
    arrays = restored['state']
    return state.replace(**arrays), list(restored['history'])

  def restore_latest(self, state, at_most: int | None = None):
    """(epochs_done, state, history) of the newest readable checkpoint, or None.

    A checkpoint that fails to restore is reported, removed, and the previous
    one tried, so a corrupt file costs at most the epochs since the one before.
    """
    for epochs_done in reversed(self.epochs()):
      if at_most is not None and epochs_done > at_most:
        continue
      try:
        state_, history = self.restore(epochs_done, state)
      except Exception as e:  # pylint: disable=broad-except
        message = (f'checkpoint {self.directory}/{epochs_done} is corrupt or incomplete '
                   f'({type(e).__name__}: {str(e)[:200]}); removing it and trying the '
                   'previous one')
        logging.warning(message)
        print(f'warning: {message}', flush=True)
        shutil.rmtree(os.path.join(self.directory, str(epochs_done)), ignore_errors=True)
        self._manager.reload()
        continue
      if len(history) != epochs_done:
        raise ValueError(f'checkpoint {self.directory}/{epochs_done} holds {len(history)} '
                         'epochs of metrics; delete the directory to start the run over.')
      return epochs_done, state_, history
    return None

  def final_params(self):
    """The parameters in the newest checkpoint, as host arrays (no model needed)."""
    restored = self._manager.restore(self.epochs()[-1], args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))
    return jax.device_get(restored['state']['params'])

  def close(self) -> None:
    self._manager.close()
