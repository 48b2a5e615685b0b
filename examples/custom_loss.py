"""Your own loss, outputs and batch keys: make_train_step builds the steps.

An API demo on random arrays: it shows the calls, not an accuracy.
"""
import flax.linen as nn
import jax
import numpy as np
import optax

import lenet_jax


class Net(nn.Module):
  """Returns a dict: the loss sees all of it, `logits_fn` picks the class scores."""

  @nn.compact
  def __call__(self, x):
    features = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
    return {'logits': nn.Dense(10)(features), 'features': features}


def smoothed_cross_entropy(outputs, labels):
  """One loss per example: cross entropy against labels smoothed by 0.1."""
  logits = outputs['logits']
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), 0.1)
  return optax.softmax_cross_entropy(logits, targets)


train_step, eval_step = lenet_jax.make_train_step(
    loss_fn=smoothed_cross_entropy, logits_fn=lambda outputs: outputs['logits'],
    input_key='x', label_key='y', donate=False)
rng = np.random.default_rng(0)
batch = {'x': rng.normal(size=(32, 12, 12, 1)).astype(np.float32),
         'y': rng.integers(0, 10, 32)}
initial = lenet_jax.create_train_state(Net(), optax.sgd(0.1), jax.random.key(0), (12, 12, 1))
state = initial
for _ in range(5):
  state, metrics = train_step(state, batch)
# donate=False left `initial` usable: it still holds the initial parameters.
accuracy = lambda s: int(eval_step(s, batch)['correct']) / len(batch['y'])
print(f"train loss {float(metrics['loss']):.3f}, accuracy {accuracy(initial):.2f} -> "
      f"{accuracy(state):.2f} on the 32 training arrays")
