"""Configuration as data: one frozen dataclass per concern, and the recipes.

A run is fully described by a `Config`; a sweep is a list of overrides of one
(see `sweep.py`). Per-block model fields are tuples with one entry per conv
block; `ModelConfig.blocks()` checks they agree.
"""
import dataclasses
from typing import Any

ACTIVATIONS = ('sigmoid', 'tanh', 'relu', 'gelu', 'silu')
POOLS = ('max', 'avg', 'none')
NORMALIZATIONS = ('none', 'batch')
CONV_REDUCTIONS = ('sum', 'mean')
INITS = ('lecun', 'xavier', 'he', 'torch')
OPTIMIZERS = ('sgd', 'momentum', 'adam', 'adamw')
SCHEDULES = ('constant', 'cosine', 'step')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The network. Defaults are exactly the note's LeNet-5."""
  channels: tuple[int, ...] = (6, 16)  # output channels of each conv block
  kernel_size: tuple[int, ...] = (5,)  # square kernel width per block, 1..11
  padding: tuple[str | int, ...] = (2, 'valid')  # per block: same, valid or pixels per side
  convs_per_block: tuple[int, ...] = (1,)  # stacked convs of that kernel
  activation: str = 'sigmoid'  # after every conv and hidden dense layer
  pool: str = 'max'  # 'max', 'avg' or 'none', after each block
  pool_size: int = 2  # pooling window, stride equal to the window
  dense: tuple[int, ...] = (120, 84)  # hidden dense widths after flatten
  num_classes: int = 10  # outputs of the last dense layer
  input_shape: tuple[int, int, int] = (28, 28, 1)  # H, W, C of one image
  normalization: str = 'none'  # 'batch': batch norm after each conv
  conv_reduction: str = 'sum'  # 'mean' divides each conv output by k*k
  init: str = 'lecun'  # kernel initialiser: lecun, xavier, he, torch
  conv_impl: str = 'auto'  # 'native' (fastest on CPU), 'patches', 'xla'; 'auto' per backend

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


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which data, and where it comes from."""
  dataset: str = 'fashion_mnist'  # mnist, fashion_mnist, kmnist, cifar10
  validation_size: int = 5000  # carved from the training split, for selection
  # 'auto': prepared TFDS data, else IDX files, else a TFDS download
  source: str = 'auto'  # auto, tfds, idx
  idx_dir: str | None = None  # directory of IDX files (else $LENET_JAX_IDX_DIR)
  tfds_data_dir: str | None = None  # TFDS data_dir (None: TFDS's default)


@dataclasses.dataclass(frozen=True)
class Config:
  """One training run."""
  model: ModelConfig = ModelConfig()
  optim: OptimConfig = OptimConfig()
  data: DataConfig = DataConfig()
  batch_size: int = 256  # training batch; the remainder batch is dropped
  eval_batch_size: int = 1000  # evaluation batch; every example counts once
  epochs: int = 15  # passes over the training set
  seed: int = 0  # one root key: initialisation and data order


def default() -> Config:
  """The best sensible recipe for the note's network: ReLU, Adam 2e-3, cosine, batch 128.

  Picked by validation accuracy among Adam learning rates 1e-3, 2e-3, 3e-3 and
  batch sizes 128, 256 (README, Results).
  """
  return Config(model=ModelConfig(activation='relu'),
                optim=OptimConfig(learning_rate=2e-3), batch_size=128)


def d2l() -> Config:
  """d2l's recipe: sigmoid, plain SGD lr 0.9, batch 256, Xavier, 10 epochs."""
  return Config(model=ModelConfig(activation='sigmoid', init='xavier'),
                optim=OptimConfig(optimizer='sgd', learning_rate=0.9,
                                  schedule='constant'),
                epochs=10)


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


def from_dict(d: dict[str, Any]) -> Config:
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


def validate(config: Config) -> None:
  """Raises ValueError naming the bad value and the fix: bad choices, non-positive
  sizes, a learning rate <= 0, an architecture whose maps vanish, the native
  convolution where it cannot run. Cheap: nothing is traced (the native library
  is compiled once per machine, if it is asked for and missing)."""
  m, o, d = config.model, config.optim, config.data
  choices = [('model.activation', m.activation, ACTIVATIONS),
             ('model.pool', m.pool, POOLS),
             ('model.normalization', m.normalization, NORMALIZATIONS),
             ('model.conv_reduction', m.conv_reduction, CONV_REDUCTIONS),
             ('model.init', m.init, INITS),
             ('optim.optimizer', o.optimizer, OPTIMIZERS),
             ('optim.schedule', o.schedule, SCHEDULES),
             ('data.source', d.source, ('auto', 'tfds', 'idx'))]
  for name, value, allowed in choices:
    if value not in allowed:
      raise ValueError(f'{name}={value!r} is not one of {allowed}.')
  from lenet_jax import conv  # pylint: disable=import-outside-toplevel
  if m.conv_impl not in conv.CONV_IMPLS:
    raise ValueError(f'model.conv_impl={m.conv_impl!r} is not one of {conv.CONV_IMPLS}.')
  if m.conv_impl == 'native':
    from lenet_jax import native  # pylint: disable=import-outside-toplevel
    if (reason := native.available()) is not None:
      raise ValueError(f"model.conv_impl='native' cannot run here: {reason} "
                       "Use conv_impl='auto' or 'patches'.")
  positives = [('batch_size', config.batch_size), ('eval_batch_size', config.eval_batch_size),
               ('epochs', config.epochs), ('model.num_classes', m.num_classes),
               ('model.pool_size', m.pool_size)]
  positives += [(f'model.channels[{i}]', c) for i, c in enumerate(m.channels)]
  positives += [(f'model.dense[{i}]', c) for i, c in enumerate(m.dense)]
  positives += [(f'model.convs_per_block[{i}]', c) for i, c in enumerate(m.convs_per_block)]
  positives += [(f'model.input_shape[{i}]', c) for i, c in enumerate(m.input_shape)]
  for name, value in positives:
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f'{name}={value!r} must be a positive integer.')
  if not m.channels:
    raise ValueError('model.channels is empty: give at least one conv block, e.g. 6,16.')
  for i, k in enumerate(m.kernel_size):
    if not isinstance(k, int) or not 1 <= k <= 11:
      raise ValueError(f'model.kernel_size[{i}]={k!r} must be an integer in 1..11.')
  for i, p in enumerate(m.padding):
    if not (p in ('same', 'valid') or (isinstance(p, int) and p >= 0)):
      raise ValueError(f"model.padding[{i}]={p!r} must be 'same', 'valid' or a "
                       'non-negative integer (pixels on each side).')
  if not o.learning_rate > 0:
    raise ValueError(f'optim.learning_rate={o.learning_rate!r} must be > 0.')
  if o.weight_decay < 0:
    raise ValueError(f'optim.weight_decay={o.weight_decay!r} must be >= 0.')
  if o.step_decay_every <= 0:
    raise ValueError(f'optim.step_decay_every={o.step_decay_every!r} must be > 0.')
  if d.validation_size < 0:
    raise ValueError(f'data.validation_size={d.validation_size!r} must be >= 0.')
  m.blocks()  # per-block fields agree with the number of blocks
  from lenet_jax import arch  # pylint: disable=import-outside-toplevel
  layers = arch.trace(m)  # an impossible architecture fails here, before compiling
  if o.frozen:
    names = [l.name for l in layers if l.params]
    unknown = [n for n in o.frozen if n not in names]
    if unknown:
      raise ValueError(f'optim.frozen names {unknown}, which are not layers with '
                       f'parameters of this model; choose from {names}.')
