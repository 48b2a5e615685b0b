"""TensorBoard event files for a finished run: scalars per epoch and its hyperparameters.

Written with tensorboardX (no TensorFlow import). `tensorboard --logdir WORKDIR`
then shows every run of a sweep, and its HPARAMS tab compares them by config.
"""
import os
import shutil
from typing import Any

SCALARS = {'train_loss': 'train/loss', 'train_acc': 'train/accuracy',
           'val_loss': 'validation/loss', 'val_acc': 'validation/accuracy',
           'test_loss': 'test/loss', 'test_acc': 'test/accuracy',
           'learning_rate': 'learning_rate', 'images_per_s': 'images_per_s'}
FINAL_METRICS = ('val_acc', 'test_acc', 'val_loss', 'test_loss')


def _hparam(value) -> bool | str | float | int:
  return value if isinstance(value, (bool, str, float, int)) else str(value)


def write_run(logdir: str, history: list[dict[str, Any]], row: dict[str, Any]) -> None:
  """(Re)writes the run's event files; a resumed run writes them afresh, once."""
  from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  shutil.rmtree(logdir, ignore_errors=True)
  os.makedirs(logdir)
  with SummaryWriter(logdir=logdir) as writer:
    for h in history:
      for key, tag in SCALARS.items():
        if key in h and h[key] is not None:
          writer.add_scalar(tag, h[key], h['epoch'])
    hparams = {k: _hparam(v) for k, v in row.items()
               if k.startswith(('model.', 'optim.', 'data.')) or k in (
                   'seed', 'batch_size', 'epochs', 'params', 'flops', 'status')}
    metrics = {f'final/{k}': row[k] for k in FINAL_METRICS if row.get(k) is not None}
    writer.add_hparams(hparams, metrics, name='hparams')
