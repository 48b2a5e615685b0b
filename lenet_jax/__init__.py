"""LeNet-5 in JAX: a small codebase for answering questions about CNNs empirically."""
from lenet_jax.config import Config, DataConfig, ModelConfig, OptimConfig
from lenet_jax.model import LeNet5
from lenet_jax.nnx_state import NNXTrainState, create_nnx_train_state
from lenet_jax.steps import make_train_step, step_functions, step_keys
from lenet_jax.train import (TrainState, create_train_state, eval_step, evaluate,
                             train_epoch, train_step)

__all__ = ['Config', 'DataConfig', 'ModelConfig', 'OptimConfig', 'LeNet5', 'NNXTrainState',
           'TrainState', 'create_nnx_train_state', 'create_train_state', 'eval_step',
           'evaluate', 'make_train_step', 'step_functions', 'step_keys', 'train_epoch',
           'train_step']
