"""Convolution layouts and argument checks shared by the CPU convolutions.

Both the patches convolution (conv.py) and the native kernels (native.py)
accept the arguments of `lax.conv_general_dilated` for the cases the model
uses; this module says which cases those are, so neither imports the other
for it.
"""
from collections.abc import Sequence

from jax import lax

NHWC = ('NHWC', 'HWIO', 'NHWC')
CHWN = ('CHWN', 'HWIO', 'CHWN')  # batch minor: what the CPU likes


def explicit_pads(padding, window: Sequence[int]) -> list[tuple[int, int]]:
  """Explicit (low, high) pads; 'SAME' puts the odd pixel of an even kernel high."""
  if padding == 'VALID':
    return [(0, 0)] * len(window)
  if padding == 'SAME':
    return [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in window]
  return [tuple(p) for p in padding]


def check_supported(lhs_shape, rhs_shape, window_strides, lhs_dilation, rhs_dilation,
                    dimension_numbers, feature_group_count, batch_group_count):
  """The layout (NHWC or CHWN) of a convolution the fast paths handle, else raises."""
  layout = layout_of(lhs_shape, rhs_shape, dimension_numbers)
  if (layout is None or tuple(window_strides) != (1, 1)
      or any(d != 1 for d in lhs_dilation or ()) or any(d != 1 for d in rhs_dilation or ())
      or feature_group_count != 1 or batch_group_count != 1):
    raise NotImplementedError(
        'the fast CPU convolutions handle 2-D NHWC or CHWN inputs with HWIO kernels, '
        f'stride 1, no dilation and one feature group; got strides={window_strides}, '
        f'dimension_numbers={dimension_numbers}, '
        f'feature_group_count={feature_group_count}. Use conv_impl="xla".')
  return layout


def layout_of(lhs_shape, rhs_shape, dimension_numbers):
  """NHWC or CHWN if `dimension_numbers` is one of them (with HWIO kernels), else None."""
  given = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
  for layout in (NHWC, CHWN):
    if given == lax.conv_dimension_numbers(lhs_shape, rhs_shape, layout):
      return layout
  return None
