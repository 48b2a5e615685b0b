"""Dropout and batch norm in a Linen model: the steps pass the mode and the keys.

An API demo on random arrays: it shows the calls, not an accuracy.
"""
import flax.linen as nn
import jax
import numpy as np
import optax

import lenet_jax


class Net(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


rng = np.random.default_rng(0)
batch = {'image': rng.integers(0, 256, (32, 12, 12, 1), np.uint8),
         'label': rng.integers(0, 10, 32)}
# The key initialises the parameters; step t's dropout key is
# lenet_jax.step_keys(state.key, t)['dropout'], a piece of fold_in(state.key, t).
state = lenet_jax.create_train_state(Net(), optax.adam(1e-3), jax.random.key(0), (12, 12, 1))
for _ in range(5):
  state, metrics = lenet_jax.train_step(state, batch)  # train=True: dropout, batch statistics
sums = lenet_jax.eval_step(state, batch)  # train=False: no dropout, running averages
print(f"train loss {float(metrics['loss']):.3f}, "
      f"eval loss {float(sums['loss_sum']) / int(sums['count']):.3f}")
