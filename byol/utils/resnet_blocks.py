"""The residual blocks of the ResNets, as Haiku's `BlockV1`/`BlockV2`/`BlockGroup` (SPEC 3).

Module names (`block_0/~/conv_0`, `batchnorm_0`, `shortcut_conv`, ...) are those of the original
release, whose checkpoints are keyed by them. `byol.utils.networks` stacks the groups into torsos.
"""

from collections.abc import Mapping
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from byol.utils import cpu_kernels
from byol.utils import precision


def conv2d(channels: int, kernel: int, stride: int, name: str, use_cpu_kernels: bool) -> hk.Conv2D:
  """Builds every convolution of the ResNets: no bias, SAME padding.

  With `use_cpu_kernels`, one that convolves 2x2 maps faster on XLA:CPU (same parameter).
  """
  conv_class = cpu_kernels.PatchProductConv2D if use_cpu_kernels else hk.Conv2D
  return conv_class(
    output_channels=channels,
    kernel_shape=kernel,
    stride=stride,
    with_bias=False,
    padding='SAME',
    name=name,
  )


def _conv_specs(channels: int, stride: int, bottleneck: bool) -> list[tuple[int, int, int]]:
  """(channels, kernel, stride) of the residual branch's convolutions."""
  if bottleneck:
    # 1x1 reduce, 3x3 (strided), 1x1 expand.
    return [(channels // 4, 1, 1), (channels // 4, 3, stride), (channels, 1, 1)]
  return [(channels, 3, stride), (channels, 3, 1)]


class _Block(hk.Module):
  """Convolutions and BatchNorms shared by the v1 and v2 residual blocks."""

  # v1 normalises its projection shortcut; v2 projects the input of conv_0,
  # which is already normalised.
  normalise_shortcut: bool

  def __init__(
    self,
    channels: int,
    stride: int,
    use_projection: bool,
    bn_config: Mapping[str, Any],
    bottleneck: bool,
    use_cpu_kernels: bool = False,
    zero_init_residual: bool = False,
    name: str | None = None,
  ):
    """Creates the `conv_i`/`batchnorm_i` pairs and the shortcut modules.

    Args:
      channels: output channels of the block.
      stride: spatial stride of the block (of its 3x3 convolution).
      use_projection: whether the shortcut is a strided 1x1 convolution.
      bn_config: keyword arguments of every `BatchNorm`.
      bottleneck: 1x1-3x3-1x1 bottleneck (True) or two 3x3 convs (False).
      use_cpu_kernels: convolve 2x2 maps the way that is fast on XLA:CPU (`cpu_kernels`).
      zero_init_residual: start the last BatchNorm's scale at 0 (see `ResNetTorso`).
      name: module name.
    """
    super().__init__(name=name)
    self.use_projection = use_projection
    if use_projection:
      self.shortcut_conv = conv2d(channels, 1, stride, 'shortcut_conv', use_cpu_kernels)
      if self.normalise_shortcut:
        self.shortcut_batchnorm = precision.BatchNorm(name='shortcut_batchnorm', **bn_config)
    specs = _conv_specs(channels, stride, bottleneck)
    # By default every BatchNorm scale starts at 1, as in the paper; Haiku's bottleneck block (the
    # released code's) starts the last one at 0, which `zero_init_residual` offers.
    self.layers = [
      (
        conv2d(out_channels, kernel, conv_stride, f'conv_{i}', use_cpu_kernels),
        precision.BatchNorm(
          name=f'batchnorm_{i}',
          **bn_config,
          **(dict(scale_init=jnp.zeros) if zero_init_residual and i == len(specs) - 1 else {}),
        ),
      )
      for i, (out_channels, kernel, conv_stride) in enumerate(specs)
    ]


class BlockV1(_Block):
  """Post-activation ResNet block (He et al. 2015), basic or bottleneck."""

  normalise_shortcut = True

  def __call__(
    self, inputs: jax.Array, is_training: bool, test_local_stats: bool = False
  ) -> jax.Array:
    """Maps `[B, H, W, C_in]` to `[B, H / stride, W / stride, channels]`."""
    shortcut = inputs
    if self.use_projection:
      shortcut = self.shortcut_conv(inputs)
      shortcut = self.shortcut_batchnorm(shortcut, is_training, test_local_stats)
    out = inputs
    for i, (conv, batchnorm) in enumerate(self.layers):
      out = batchnorm(conv(out), is_training, test_local_stats)
      # The last BatchNorm's output is summed with the shortcut first.
      if i < len(self.layers) - 1:
        out = jax.nn.relu(out)
    return jax.nn.relu(out + shortcut)


class BlockV2(_Block):
  """Pre-activation ResNet block (He et al. 2016), basic or bottleneck."""

  normalise_shortcut = False

  def __call__(
    self, inputs: jax.Array, is_training: bool, test_local_stats: bool = False
  ) -> jax.Array:
    """Maps `[B, H, W, C_in]` to `[B, H / stride, W / stride, channels]`."""
    out = shortcut = inputs
    for i, (conv, batchnorm) in enumerate(self.layers):
      out = jax.nn.relu(batchnorm(out, is_training, test_local_stats))
      if i == 0 and self.use_projection:
        shortcut = self.shortcut_conv(out)
      out = conv(out)
    return out + shortcut


class BlockGroup(hk.Module):
  """A stack of residual blocks; only the first one strides and projects."""

  def __init__(
    self,
    channels: int,
    num_blocks: int,
    stride: int,
    bn_config: Mapping[str, Any],
    resnet_v2: bool,
    bottleneck: bool,
    use_projection: bool,
    use_cpu_kernels: bool = False,
    zero_init_residual: bool = False,
    name: str | None = None,
  ):
    """Creates `num_blocks` blocks named `block_0`, `block_1`, ...

    Args:
      channels: output channels of every block.
      num_blocks: number of blocks.
      stride: stride of the first block.
      bn_config: keyword arguments of every `BatchNorm`.
      resnet_v2: pre-activation blocks (`BlockV2`) instead of `BlockV1`.
      bottleneck: bottleneck blocks instead of basic ones.
      use_projection: whether the first block has a projection shortcut.
      use_cpu_kernels: take the routes that are fast on XLA:CPU (`cpu_kernels`).
      zero_init_residual: start each block's last BatchNorm scale at 0 (see `ResNetTorso`).
      name: module name.
    """
    super().__init__(name=name)
    block_class = BlockV2 if resnet_v2 else BlockV1
    self.blocks = [
      block_class(
        channels=channels,
        stride=stride if i == 0 else 1,
        use_projection=use_projection and i == 0,
        bn_config=bn_config,
        bottleneck=bottleneck,
        use_cpu_kernels=use_cpu_kernels,
        zero_init_residual=zero_init_residual,
        name=f'block_{i}',
      )
      for i in range(num_blocks)
    ]

  def __call__(
    self, inputs: jax.Array, is_training: bool, test_local_stats: bool = False
  ) -> jax.Array:
    """Applies the blocks in order: `[B, H, W, C_in]` -> `[B, H', W', channels]`."""
    out = inputs
    for block in self.blocks:
      out = block(out, is_training, test_local_stats)
    return out
