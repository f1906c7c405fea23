"""The CPU-only routes: the numbers of the plain ops, computed another way where XLA:CPU is slow.

Each route here gives the values and gradients of a plain op (Haiku's convolution and max pool,
the augmentations' Gaussian blur) up to float32 rounding, and is several times faster on XLA:CPU;
elsewhere the plain ops are the fast ones. The networks and the augmentations take these routes
only when told to, by a Python bool (`use_cpu_kernels`) that the experiment resolves once from
`network_config['cpu_kernels']` with `resolve_switch`, outside traced code. Figures: ResNet-18
pretraining update on a 2-core CPU (BENCHMARKS.md, and the commits named below).
"""

from collections.abc import Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

# The values of `network_config.cpu_kernels` (strings, as `--override` and the flags give them).
SWITCH_VALUES = ('auto', 'on', 'off')


def resolve_switch(setting: str) -> bool:
  """Whether to take the CPU routes: 'on', 'off', or for 'auto' whether JAX computes on the CPU.

  Called when an experiment is built, never in traced code.

  Raises:
    ValueError: for any other value; the message says which values are allowed.
  """
  if setting not in SWITCH_VALUES:
    raise ValueError(
      f"network_config.cpu_kernels must be one of {', '.join(SWITCH_VALUES)} ('auto': on for "
      f'the CPU backend only); got {setting!r}.'
    )
  return jax.default_backend() == 'cpu' if setting == 'auto' else setting == 'on'


# ------------------------------------------------------------- convolutions over 2x2 maps


def conv_as_patch_product(
  inputs: jax.Array, w: jax.Array, stride: Sequence[int], padding: str
) -> jax.Array:
  """The convolution of NHWC `inputs` with HWIO `w`, as image patches times a matrix.

  [B, H, W, C] x [kh, kw, C, O] -> [B, H', W', O], equal to `jax.lax.conv_general_dilated`.
  """
  kernel_height, kernel_width, in_channels, out_channels = w.shape
  patches = jax.lax.conv_general_dilated_patches(
    inputs,
    (kernel_height, kernel_width),
    tuple(stride),
    padding,
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )  # [B, H', W', C * kh * kw], channel-major.
  w_matrix = jnp.transpose(w, (2, 0, 1, 3)).reshape(
    in_channels * kernel_height * kernel_width, out_channels
  )  # [C * kh * kw, O]
  return jnp.dot(patches, w_matrix)


class PatchProductConv2D(hk.Conv2D):
  """`hk.Conv2D` with the same parameter, computed as a patch product on 2x2 maps.

  Why: XLA:CPU convolves a 2x2 feature map with a kernel larger than 1x1 some 40 times below its
  usual rate (a ResNet-18 at 64 px ends on such maps); image patches times a matrix give the same
  result and gradients at the usual rate. Gain: a 3x3 convolution over 2x2 maps, 512 channels,
  batch 64, forward and backward, 1067 -> 39 ms; the ResNet-18 update at 64 px, batch 64,
  5.4 -> 34.3 images/s (81b9dee). Other shapes take the plain convolution.
  """

  def __call__(self, inputs: jax.Array, **kwargs: Any) -> jax.Array:
    if not (
      inputs.ndim == 4
      and inputs.shape[1:3] == (2, 2)
      and self.kernel_shape != (1, 1)
      and isinstance(self.padding, str)
    ):
      return super().__call__(inputs, **kwargs)
    w_shape = (*self.kernel_shape, inputs.shape[-1], self.output_channels)
    # Haiku's default initialiser of a convolution, so the parameter is the one hk.Conv2D makes.
    fan_in = np.prod(w_shape[:-1])
    w_init = self.w_init or hk.initializers.TruncatedNormal(stddev=1.0 / np.sqrt(fan_in))
    w = hk.get_parameter('w', w_shape, inputs.dtype, init=w_init)
    return conv_as_patch_product(inputs, w, self.stride, self.padding)


# ------------------------------------------------------------- max-pool gradient


def max_pool(inputs: jax.Array, window: int, stride: int) -> jax.Array:
  """`hk.max_pool` of NHWC `inputs` over square windows with SAME padding: same values, gradients.

  Why: the usual gradient of a max pool is XLA's select-and-scatter, which XLA:CPU runs some 6x
  slower than the alternative here: the forward pass also records which element of each window
  is the maximum (the first one on ties, as select-and-scatter picks), and the backward pass
  places each output's gradient there with strided pads. Calls that are not differentiated (the
  target network, evaluation) take the plain pool. Gain: forward and backward of a
  [64, 64, 64, 64] input 387 -> 77 ms; the ResNet-18 update at 64 px, batch 64,
  1691-1770 -> 1587-1615 ms, and at 128 px, batch 32, 2795-2896 -> 2554-2618 ms (ccc4be2).
  """

  def pool(x: jax.Array) -> jax.Array:
    return hk.max_pool(
      x, window_shape=(1, window, window, 1), strides=(1, stride, stride, 1), padding='SAME'
    )

  batch, height, width, channels = inputs.shape
  out_height, out_width = -(-height // stride), -(-width // stride)
  # Padded elements are -inf and never the maximum.
  pads = jax.lax.padtype_to_pads((height, width), (window, window), (stride, stride), 'SAME')
  padded_shape = (batch, height + sum(pads[0]), width + sum(pads[1]), channels)
  offsets = [divmod(k, window) for k in range(window * window)]  # (row, column), row-major.

  def argmax_pool(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)
    best = index = None
    for k, (row, column) in enumerate(offsets):
      piece = jax.lax.slice(  # [B, Ho, Wo, C]: element (row, column) of every window.
        padded,
        (0, row, column, 0),
        (
          batch,
          row + (out_height - 1) * stride + 1,
          column + (out_width - 1) * stride + 1,
          channels,
        ),
        (1, stride, stride, 1),
      )
      if best is None:
        best, index = piece, jnp.zeros(piece.shape, jnp.int8)
      else:
        larger = piece > best  # Strictly: a tie keeps the earlier element.
        best, index = jnp.where(larger, piece, best), jnp.where(larger, jnp.int8(k), index)
    return best, index

  def backward(index: jax.Array, grads: jax.Array) -> tuple[jax.Array]:
    zero = jnp.zeros((), grads.dtype)
    padded_grads = jnp.zeros(padded_shape, grads.dtype)
    for k, (row, column) in enumerate(offsets):
      # Interior padding puts output (i, j)'s gradient at padded input (i * stride + row, ...).
      padded_grads += jax.lax.pad(
        jnp.where(index == k, grads, zero),
        zero,
        (
          (0, 0, 0),
          (row, padded_shape[1] - row - (out_height - 1) * stride - 1, stride - 1),
          (column, padded_shape[2] - column - (out_width - 1) * stride - 1, stride - 1),
          (0, 0, 0),
        ),
      )
    return (padded_grads[:, pads[0][0] : pads[0][0] + height, pads[1][0] : pads[1][0] + width],)

  differentiable_pool = jax.custom_vjp(pool)
  differentiable_pool.defvjp(argmax_pool, backward)
  return differentiable_pool(inputs)


# ------------------------------------------------------------- Gaussian blur


def _blur_matrices(kernel: jax.Array, size: int) -> jax.Array:
  """[B, size, size] banded matrices that convolve a length-`size` axis with `kernel` [B, taps].

  Row i holds the kernel centred on column i, cut at the borders: zero padding, SAME output.
  """
  radius = (kernel.shape[1] - 1) // 2
  tap = jnp.arange(size)[None, :] - jnp.arange(size)[:, None] + radius  # [size, size]
  inside = (tap >= 0) & (tap <= 2 * radius)
  return jnp.where(inside, kernel[:, jnp.clip(tap, 0, 2 * radius)], 0.0)


def blur_as_products(images: jax.Array, kernel: jax.Array) -> jax.Array:
  """Separable blur of channel-major [3, B, H, W] with per-image `kernel` [B, taps], zero-padded.

  The augmentations' blur (vertical then horizontal, SAME) as products with banded matrices.
  Why: as a sum of shifted slices, XLA:CPU fuses the cheap ops before the blur (colour jitter,
  grayscale) into every one of the 2 x taps slices and computes them again for each, while a
  matrix product reads its operand once (the blur itself costs more FLOPs, at the matrix unit's
  rate). HIGHEST precision keeps it float32. Gain: the augmentations of both views, batch 32,
  169 -> 100 ms at 128 px and 44 -> 21 ms at 64 px; the ResNet-18 update 34.3 -> 36.2 images/s
  at 64 px and 11.7 -> 12.7 at 128 px (cfc60d0).
  """
  highest = jax.lax.Precision.HIGHEST
  # Both are plain matrix products per image and channel: [H, H] x [H, W], then [H, W] x [W, W].
  vertical = jnp.einsum(
    'bij,cbjw->cbiw', _blur_matrices(kernel, images.shape[2]), images, precision=highest
  )
  return jnp.einsum(
    'bkw,cbhw->cbhk', _blur_matrices(kernel, images.shape[3]), vertical, precision=highest
  )
