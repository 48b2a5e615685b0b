"""Measuring a trained run on images other than its test set (e.g. moved by a few
pixels), for the metrics an experiment's `extra` hook adds to each run.
"""
import functools

import jax
import numpy as np

from lenet_jax.config import Config


def shift_images(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """Images moved by (dy, dx) pixels, the uncovered border filled with 0."""
  out = np.zeros_like(images)
  h, w = images.shape[1:3]
  out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = images[
      :, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
  return out


@functools.lru_cache(maxsize=None)
def _eval_functions(model_cfg):
  """One apply function and optimizer per architecture: jit caches on them, so
  building new ones per call would compile (and keep) a program every call."""
  import optax  # pylint: disable=import-outside-toplevel
  from lenet_jax.model import LeNet5  # pylint: disable=import-outside-toplevel
  return LeNet5(model_cfg).apply, optax.identity()


def accuracy(cfg: Config, params, images: np.ndarray, labels: np.ndarray,
             batch_size: int = 1000) -> float:
  """Accuracy of `params` on arbitrary images (e.g. shifted ones)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from lenet_jax import train  # pylint: disable=import-outside-toplevel
  apply_fn, tx = _eval_functions(cfg.model)
  state = train.TrainState.create(apply_fn=apply_fn, params=params, tx=tx)
  if cfg.model.normalization == 'batch':
    raise ValueError('accuracy() needs the batch statistics of a batch-norm model.')
  sums = train.evaluate(state, jnp.asarray(images), jnp.asarray(labels), batch_size=batch_size)
  return int(jax.device_get(sums['correct'])) / len(labels)
