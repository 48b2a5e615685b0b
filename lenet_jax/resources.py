"""Will it fit? Memory a group of runs needs, estimated from the analytic trace.

A configuration far beyond the machine (a million channels, a dense layer of
two billion units) would otherwise hang in compilation or die in XLA's
allocator after minutes; `check_fits` refuses it before anything is compiled,
naming the estimate and what the machine has. The estimate is deliberately
rough (within a small factor): 4 bytes per float32, parameters with their
gradients and optimizer slots, and every layer's output kept for the backward
pass together with its gradient and one temporary of the same size.
"""
import math
import os

from lenet_jax import arch
from lenet_jax.config import Config

BYTES = 4  # float32
# Buffers per parameter: the value, its gradient, and the optimizer's slots.
PARAM_COPIES = {'sgd': 2, 'momentum': 3, 'adam': 4, 'adamw': 4}
# Per activation while training: the output kept for the backward pass, its
# gradient, and one temporary (an im2col patch matrix, a pooling mask).
TRAIN_ACTIVATION_COPIES = 3
EVAL_ACTIVATION_COPIES = 2  # one layer's input and output
GiB = 2**30


def estimate(cfg: Config, models: int = 1, stacked: bool = False) -> dict[str, int]:
  """Bytes a group of `models` runs of `cfg` needs (`stacked`: all in one program)."""
  layers = arch.trace(cfg.model)
  params = sum(l.params for l in layers)
  sizes = [math.prod(cfg.model.input_shape)] + [math.prod(l.out_shape) for l in layers]
  state = BYTES * params * PARAM_COPIES[cfg.optim.optimizer] * models
  # Training keeps every layer's output for the backward pass; evaluation
  # needs one layer's input and output at a time.
  activations = BYTES * max(sum(sizes) * cfg.batch_size * TRAIN_ACTIVATION_COPIES,
                            max(sizes) * cfg.eval_batch_size * EVAL_ACTIVATION_COPIES)
  activations *= models if stacked else 1
  return {'state': state, 'activations': activations, 'total': state + activations}


def available_bytes() -> tuple[int, str]:
  """(bytes free for a new program, where that figure comes from) on the default device."""
  import jax  # pylint: disable=import-outside-toplevel
  device = jax.local_devices()[0]
  if device.platform != 'cpu':
    stats = device.memory_stats() or {}
    if 'bytes_limit' in stats:
      return (stats['bytes_limit'] - stats.get('bytes_in_use', 0),
              f'{device.device_kind} memory')
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024, 'available memory (MemAvailable)'
  except OSError:
    pass
  return (os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_AVPHYS_PAGES'), 'free memory')


# --max_models=auto: on the CPU, 8 (in turn, the group size only sets how many
# runs share a checkpoint; stacked, more models per program measured no faster
# there); on a GPU/TPU, as many runs as fit in this share of the free device
# memory, at most AUTO_MOST.
AUTO_CPU = 8
AUTO_MEMORY_SHARE = 0.5
AUTO_MOST = 1024


def auto_max_models(configs: list[Config], stacked: bool, available=None) -> int:
  """The group size --max_models=auto stands for: see AUTO_* above.

  Stacked, every architecture of the sweep must fit that many runs (the
  estimate of `estimate`, which is rough, hence the share); in turn, AUTO_CPU.
  """
  import jax  # pylint: disable=import-outside-toplevel
  if not stacked or not configs or jax.default_backend() == 'cpu':
    return AUTO_CPU
  budget, _ = available or available_bytes()
  per_model = max(estimate(c, 1, stacked=True)['total'] for c in configs)
  return int(max(1, min(AUTO_MOST, AUTO_MEMORY_SHARE * budget // per_model)))


def check_fits(groups: list[list[Config]], stacked: bool, available=None) -> None:
  """Raises ValueError if a group's estimate exceeds the memory available.

  `available`: (bytes, description); the default device's by default.
  """
  budget, where = available or available_bytes()
  for members in groups:
    cfg = members[0]
    need = estimate(cfg, len(members), stacked and len(members) > 1)
    if need['total'] > budget:
      together = (f' for {len(members)} runs trained together' if len(members) > 1 else '')
      raise ValueError(
          f'this configuration (channels={cfg.model.channels}, dense={cfg.model.dense}, '
          f'batch_size={cfg.batch_size}, eval_batch_size={cfg.eval_batch_size}) needs '
          f'about {need["total"] / GiB:.1f} GiB{together} (parameters and optimizer state '
          f'{need["state"] / GiB:.1f} GiB, activations {need["activations"] / GiB:.1f} GiB), '
          f'more than the {budget / GiB:.1f} GiB of {where} here. Use fewer channels or '
          'dense units, a smaller --batch_size or --eval_batch_size, or --max_models=1.')
