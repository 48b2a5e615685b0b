"""A Flax NNX module through the same steps: modes, batch statistics and Rngs handled.

An API demo on random arrays: it shows the calls, not an accuracy.
"""
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import lenet_jax


class Net(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.norm = nnx.BatchNorm(8, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)
    self.dense = nnx.Linear(12 * 12 * 8, 10, rngs=rngs)

  def __call__(self, x):
    x = self.dropout(nnx.relu(self.norm(self.conv(x))))
    return self.dense(x.reshape(x.shape[0], -1))


rng = np.random.default_rng(0)
batch = {'image': rng.integers(0, 256, (32, 12, 12, 1), np.uint8),
         'label': rng.integers(0, 10, 32)}
# The module's Rngs seed its dropout masks; a new mask every step, the same for seed 0.
state = lenet_jax.create_train_state(Net(nnx.Rngs(0)), optax.adam(1e-3))
for _ in range(5):
  state, metrics = lenet_jax.train_step(state, batch)  # model.train() inside
sums = lenet_jax.eval_step(state, batch)  # model.eval(): running averages, no dropout
model = state.module()  # an nnx.Module again, with the trained parameters and statistics
model.eval()
logits = model(jnp.asarray(batch['image'], jnp.float32) / 255)
print(f"train loss {float(metrics['loss']):.3f}, "
      f"eval loss {float(sums['loss_sum']) / int(sums['count']):.3f}, logits {logits.shape}")
