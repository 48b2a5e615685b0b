"""Architecture facts computed analytically: shapes, parameters, FLOPs, receptive field.

`trace(model_config)` walks the network layer by layer without building it,
so an impossible architecture fails here, before anything is compiled, with
the arithmetic that went wrong. Tests hold these numbers against the real
parameter tree of `model.LeNet5`.
"""
import dataclasses

from lenet_jax.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Layer:
  name: str  # the module name in the parameter tree, or a descriptive one
  kind: str  # conv, batchnorm, pool, flatten (the dense input: 'flatten' or 'gap'), dense
  out_shape: tuple[int, ...]  # (H, W, C) or (features,)
  params: int  # trainable parameters
  macs: int  # multiply-adds per example, forward
  receptive_field: int  # input pixels (per side) one output value sees


def conv_pads(kernel: int, padding: str | int) -> tuple[int, int]:
  """(low, high) pixels of zero padding; 'same' puts an even kernel's extra pixel high."""
  if padding == 'valid':
    return 0, 0
  if padding == 'same':
    return (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2
  return padding, padding


def conv_name(block: int, conv: int) -> str:
  return f'block{block}_conv{conv}'


def conv_stride(model: ModelConfig, last_in_block: bool) -> int:
  """A conv's stride: pool_size for a block's last conv under pool='stride', else 1."""
  return model.pool_size if model.pool == 'stride' and last_in_block else 1


def trace(model: ModelConfig) -> list[Layer]:
  """Every layer's output shape, parameters, multiply-adds and receptive field."""
  height, width, channels = model.input_shape
  rf, jump = 1, 1
  layers = []
  for b, (features, kernel, padding, convs) in enumerate(model.blocks(), start=1):
    for c in range(1, convs + 1):
      name = conv_name(b, c)
      lo, hi = conv_pads(kernel, padding)
      new_h, new_w = height + lo + hi - kernel + 1, width + lo + hi - kernel + 1
      if new_h <= 0 or new_w <= 0:
        size = height if new_h <= 0 else width
        raise ValueError(
            f'impossible architecture at block {b} conv {c} ({name}): output size '
            f'{size} + {lo + hi} - {kernel} + 1 = {size + lo + hi - kernel + 1} <= 0 '
            f'(input {height}x{width}, kernel {kernel}, padding {padding!r}). Use a '
            "smaller kernel, 'same' padding, fewer blocks or no pooling before it.")
      # pool='stride': the block's last conv keeps every s-th row and column,
      # ceil(size / s) of them, and only those cost multiply-adds.
      stride = conv_stride(model, c == convs)
      new_h, new_w = -(-new_h // stride), -(-new_w // stride)
      macs = new_h * new_w * features * kernel * kernel * channels
      height, width = new_h, new_w
      rf += (kernel - 1) * jump
      jump *= stride
      layers.append(Layer(name, 'conv', (height, width, features),
                          kernel * kernel * channels * features + features, macs, rf))
      channels = features
      if model.normalization == 'batch':
        layers.append(Layer(f'block{b}_bn{c}', 'batchnorm', (height, width, channels),
                            2 * channels, 0, rf))
    if model.pool not in ('none', 'stride'):
      p = model.pool_size
      if height // p <= 0 or width // p <= 0:
        size = height if height // p <= 0 else width
        raise ValueError(
            f'impossible architecture at block {b} pool: output size {size} // {p} '
            f'= {size // p} <= 0 (input {height}x{width}). Use fewer blocks, '
            "'same' padding or pool='none'.")
      height, width = height // p, width // p
      rf += (p - 1) * jump
      jump *= p
      layers.append(Layer(f'block{b}_{model.pool}pool', 'pool',
                          (height, width, channels), 0, 0, rf))
  if model.head == 'gap':  # one mean per channel, whatever the map size
    features = channels
    layers.append(Layer('gap', 'flatten', (features,), 0, 0, rf))
  else:
    features = height * width * channels
    layers.append(Layer('flatten', 'flatten', (features,), 0, 0, rf))
  widths = list(model.dense) + [model.num_classes]
  for i, out in enumerate(widths, start=1):
    name = 'logits' if i == len(widths) else f'dense{i}'
    layers.append(Layer(name, 'dense', (out,), features * out + out, features * out, rf))
    features = out
  return layers


def totals(model: ModelConfig) -> dict[str, int]:
  """Trainable parameters, forward multiply-adds and FLOPs (2 per multiply-add) per example."""
  layers = trace(model)
  macs = sum(l.macs for l in layers)
  return {'params': sum(l.params for l in layers), 'macs': macs, 'flops': 2 * macs,
          'receptive_field': layers[-1].receptive_field}


def describe(model: ModelConfig) -> str:
  """The shape trace as a table, with totals."""
  rows = [('layer', 'output HxWxC', 'params', 'MACs', 'RF')]
  h, w, c = model.input_shape
  rows.append(('input', f'{h}x{w}x{c}', '0', '0', '1'))
  for l in trace(model):
    rows.append((l.name, 'x'.join(map(str, l.out_shape)), f'{l.params:,}',
                 f'{l.macs:,}', str(l.receptive_field)))
  t = totals(model)
  rows.append(('total', '', f"{t['params']:,}", f"{t['macs']:,}", ''))
  widths = [max(len(r[i]) for r in rows) for i in range(5)]
  lines = ['  '.join(cell.ljust(wd) if i == 0 else cell.rjust(wd)
                     for i, (cell, wd) in enumerate(zip(r, widths))) for r in rows]
  lines.insert(1, '-' * len(lines[0]))
  lines.append(f"forward FLOPs per example: {t['flops']:,} (2 per multiply-add)")
  return '\n'.join(lines)
