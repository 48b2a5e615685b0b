"""Flax NNX modules trained by the same pure steps as Linen ones.

An `nnx.Module` is split into its graph definition (static) and two pytrees:
the parameters, which the optimizer updates, and everything else it holds
(batch norm's running statistics, the keys and counts of its `nnx.Rngs`
streams), which the model itself updates when called. A step merges them
into a module, puts it in `.train()` or `.eval()` mode, calls it, and splits
the updated state off again; so the steps stay pure functions of the state,
dropout masks differ from step to step (the stream counts advance) and a run
is reproducible from the module's seed, just as with `nnx.Optimizer`.
"""
from collections.abc import Callable
from typing import Any

import flax
import jax
import optax
from flax import nnx


def _copy(x):
  return x.copy() if isinstance(x, jax.Array) else x


class NNXTrainState(flax.struct.PyTreeNode):
  """An NNX module and its optimizer, as pytrees; `module()` merges it back."""
  step: jax.Array
  params: Any  # the module's nnx.Param values (a pure nnx.State)
  model_state: Any  # all else it holds: BatchStat, RngKey, RngCount, ...
  opt_state: optax.OptState
  graphdef: nnx.GraphDef = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, module: nnx.Module, tx: optax.GradientTransformation) -> 'NNXTrainState':
    graphdef, params, model_state = nnx.split(module, nnx.Param, ...)
    # Copies, not the module's own arrays: a train_step that donates its state
    # would otherwise delete the arrays of the module the user still holds.
    params, model_state = jax.tree.map(_copy, (nnx.as_pure(params), nnx.as_pure(model_state)))
    return cls(step=0, params=params, model_state=model_state, opt_state=tx.init(params),
               graphdef=graphdef, tx=tx)

  def apply_gradients(self, *, grads, **changes) -> 'NNXTrainState':
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state, **changes)

  def module(self) -> nnx.Module:
    """The trained module (a new object; the one the state was made from is unchanged)."""
    return nnx.merge(self.graphdef, self.params, self.model_state)


def create_nnx_train_state(module: nnx.Module,
                           tx: optax.GradientTransformation) -> NNXTrainState:
  """The train state of an initialised NNX module (its Rngs seed its dropout keys)."""
  if not isinstance(module, nnx.Module):
    raise TypeError(f'create_nnx_train_state takes an nnx.Module, not a '
                    f'{type(module).__name__}; for a Linen module use create_train_state.')
  return NNXTrainState.create(module, tx)


def apply(state: NNXTrainState, params, inputs, training: bool,
          mode_kwargs: Callable[[Callable], dict[str, bool]]):
  """(outputs, model_state) of the module called in training or evaluation mode.

  `mode_kwargs(call)` gives the mode argument to pass to the module's call,
  for a module that takes one besides the `.train()`/`.eval()` switches.
  """
  model = nnx.merge(state.graphdef, params, state.model_state)
  if training:
    model.train()
  else:
    model.eval()
  outputs = model(inputs, **mode_kwargs(model.__call__))
  return outputs, nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param)))
