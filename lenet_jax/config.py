"""Configuration as data: one frozen dataclass per concern, and the recipes.

A run is fully described by a `Config`; a sweep is a list of overrides of one
(see `sweep.py`). Per-block model fields are tuples with one entry per conv
block; `ModelConfig.blocks()` checks they agree. `validation.check_config` holds
every field to its rules.
"""
import dataclasses
from typing import Any

ACTIVATIONS = ('sigmoid', 'tanh', 'relu', 'gelu', 'silu')
POOLS = ('max', 'avg', 'none', 'stride')
HEADS = ('flatten', 'gap')
NORMALIZATIONS = ('none', 'batch')
CONV_REDUCTIONS = ('sum', 'mean')
INITS = ('lecun', 'xavier', 'he', 'torch')
OPTIMIZERS = ('sgd', 'momentum', 'adam', 'adamw')
SCHEDULES = ('constant', 'cosine', 'step')
# Compute precision of convolutions and matrix multiplies: 'default' is the
# backend's (float32 on the CPU; TF32 tensor cores for float32 on recent
# NVIDIA GPUs), 'float32' full float32 everywhere, 'tf32' TF32 where the
# hardware has it, 'bfloat16' bfloat16 inputs with float32 accumulation and
# float32 parameters.
PRECISIONS = ('default', 'float32', 'tf32', 'bfloat16')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The network. Defaults are exactly the note's LeNet-5."""
  channels: tuple[int, ...] = (6, 16)  # output channels of each conv block
  kernel_size: tuple[int, ...] = (5,)  # square kernel width per block, 1..11
  padding: tuple[str | int, ...] = (2, 'valid')  # per block: same, valid or pixels per side
  convs_per_block: tuple[int, ...] = (1,)  # stacked convs of that kernel
  activation: str = 'sigmoid'  # after every conv and hidden dense layer
  inner_activation: bool = True  # false: none between a block's stacked convs
  pool: str = 'max'  # 'max', 'avg', 'none' after each block; 'stride': last conv strided
  pool_size: int = 2  # pooling window and stride (pool='stride': the conv's stride)
  dense: tuple[int, ...] = (120, 84)  # hidden dense widths after flatten
  head: str = 'flatten'  # dense input: 'flatten' the maps, or 'gap' (mean over H, W)
  num_classes: int = 10  # outputs of the last dense layer
  input_shape: tuple[int, int, int] = (28, 28, 1)  # H, W, C of one image
  normalization: str = 'none'  # 'batch': batch norm after each conv
  conv_reduction: str = 'sum'  # 'mean' divides each conv output by k*k
  init: str = 'lecun'  # kernel initialiser: lecun, xavier, he, torch
  conv_init_scale: float = 1.0  # multiplies every conv's initial kernel
  conv_impl: str = 'auto'  # 'native' (fastest on CPU), 'patches' (GPU), 'xla'; 'auto' per backend
  precision: str = 'default'  # conv/dense compute: default (backend's), float32, tf32, bfloat16

  def blocks(self) -> list[tuple[int, int, str | int, int]]:
    """(channels, kernel, padding, convs) per block; a 1-entry field broadcasts."""
    n = len(self.channels)
    fields = {'kernel_size': self.kernel_size, 'padding': self.padding,
              'convs_per_block': self.convs_per_block}
    columns = []
    for name, values in fields.items():
      if len(values) == 1:
        values = values * n
      if len(values) != n:
        raise ValueError(
            f'{name}={values} has {len(values)} entries but channels='
            f'{self.channels} has {n} blocks: give one value per block, or one '
            'value for all. (On the command line, repeat a flag to sweep over '
            'values: --kernel_size=3 --kernel_size=5.)')
      columns.append(values)
    return list(zip(self.channels, *columns))


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """The optimizer and learning-rate schedule."""
  optimizer: str = 'adam'  # sgd, momentum, adam, adamw
  learning_rate: float = 1e-3  # peak learning rate
  schedule: str = 'cosine'  # constant, cosine (to 0 at the end), step
  momentum: float = 0.9  # for 'momentum'
  weight_decay: float = 1e-4  # for 'adamw' (decoupled)
  step_decay_factor: float = 0.1  # for 'step': multiply lr by this ...
  step_decay_every: int = 5  # ... every this many epochs
  frozen: tuple[str, ...] = ()  # modules kept at their initial values, e.g. block1_conv1
  conv_lr_scale: float = 1.0  # multiplies every conv's updates (kernel and bias)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which data, and where it comes from."""
  dataset: str = 'fashion_mnist'  # mnist, fashion_mnist, kmnist, cifar10, mnist_5k, animal_mnist
  validation_size: int | None = None  # carved from train, for selection; None: 5000 (mnist_5k 500, animal_mnist 700)
  # 'auto': prepared TFDS data, else IDX files, else a TFDS download
  source: str = 'auto'  # auto, tfds, idx
  idx_dir: str | None = None  # directory of IDX files (else $LENET_JAX_IDX_DIR)
  tfds_data_dir: str | None = None  # TFDS data_dir (None: TFDS's default)
  augment_shift: int = 0  # training images shifted by random dy, dx in [-this, this]


@dataclasses.dataclass(frozen=True)
class Config:
  """One training run."""
  model: ModelConfig = ModelConfig()
  optim: OptimConfig = OptimConfig()
  data: DataConfig = DataConfig()
  batch_size: int = 256  # training batch; the remainder batch is dropped
  eval_batch_size: int = 1000  # evaluation batch; every example counts once
  epochs: int = 15  # passes over the training set (the most a run trains)
  # Stop a run once its validation accuracy has not improved for this many
  # epochs (None: train every epoch). Every run also records its best epoch.
  patience: int | None = None
  seed: int = 0  # one root key: initialisation and data order


# The recipes live in lenet_jax/recipes/, one module each with `get_config()` and a
# docstring giving what it is, its command, runtime and result. A recipe module
# imports these dataclasses, so it is imported here only when it is asked for.
def _from_module(name: str) -> Config:
  import importlib  # pylint: disable=import-outside-toplevel
  return importlib.import_module(f'lenet_jax.recipes.{name}').get_config()


def default() -> Config:
  """The default recipe: ReLU, Adam 2e-3, cosine, batch 128 (lenet_jax/recipes/default.py)."""
  return _from_module('default')


def d2l() -> Config:
  """d2l's recipe: sigmoid, plain SGD lr 0.9, batch 256, Xavier, 10 epochs
  (lenet_jax/recipes/d2l.py)."""
  return _from_module('d2l')


RECIPES = {'default': default, 'd2l': d2l}


def recipe(name: str) -> Config:
  if name not in RECIPES:
    raise ValueError(f'recipe={name!r} is unknown; choose one of {sorted(RECIPES)}.')
  return RECIPES[name]()


# Each override key names a field: 'model.channels', 'optim.learning_rate',
# 'batch_size'. Sweeps and the command line speak in these keys.
def field_names() -> dict[str, type]:
  names = {}
  for section in ('model', 'optim', 'data'):
    cls = {'model': ModelConfig, 'optim': OptimConfig, 'data': DataConfig}[section]
    for f in dataclasses.fields(cls):
      names[f'{section}.{f.name}'] = f.type
  for f in dataclasses.fields(Config):
    if f.name not in ('model', 'optim', 'data'):
      names[f.name] = f.type
  return names


def override(config: Config, overrides: dict[str, Any]) -> Config:
  """Returns `config` with dotted-key overrides applied."""
  known = field_names()
  sections: dict[str, dict[str, Any]] = {}
  top: dict[str, Any] = {}
  for key, value in overrides.items():
    if key not in known:
      raise ValueError(f'unknown config field {key!r}; known fields: {sorted(known)}')
    if '.' in key:
      section, name = key.split('.')
      sections.setdefault(section, {})[name] = value
    else:
      top[key] = value
  for section, values in sections.items():
    top[section] = dataclasses.replace(getattr(config, section), **values)
  return dataclasses.replace(config, **top)


def to_dict(config: Config) -> dict[str, Any]:
  return dataclasses.asdict(config)


# Fields added after runs were first recorded, with their defaults. At the
# default they are left out of a run's identity (its id, the config a finished
# run is checked against, the sweep a workdir records), so every run recorded
# before a field existed keeps its id and is found finished.
LATER_FIELDS: dict[str, Any] = {'patience': None, 'model.precision': 'default'}


def run_id(config: Config) -> str:
  """A stable name from a hash of the full configuration (its `identity`)."""
  import hashlib  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  blob = json.dumps(identity(config), sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:12]


def identity(config: Config | dict[str, Any]) -> dict[str, Any]:
  """The config as a JSON-ready dict, without LATER_FIELDS at their defaults."""
  import json  # pylint: disable=import-outside-toplevel
  d = to_dict(config) if isinstance(config, Config) else config
  d = json.loads(json.dumps(d, default=str))
  for key, default in LATER_FIELDS.items():
    *section, name = key.split('.')
    holder = d.get(section[0], {}) if section else d
    if name in holder and holder[name] == default:
      del holder[name]
  return d


def from_dict(d: dict[str, Any]) -> Config:
  """The Config of `to_dict`'s dict (as a run's config.json holds it; lists back to
  tuples); fields it lacks take their defaults."""
  def tuples(cls, values):
    out = {}
    for f in dataclasses.fields(cls):
      if f.name in values:
        v = values[f.name]
        out[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**out)
  return Config(model=tuples(ModelConfig, d.get('model', {})),
                optim=tuples(OptimConfig, d.get('optim', {})),
                data=tuples(DataConfig, d.get('data', {})),
                **{k: v for k, v in d.items() if k not in ('model', 'optim', 'data')})
