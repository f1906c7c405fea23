"""Haiku networks of BYOL: ResNet encoders and the projector/predictor MLP.

Module and parameter names follow the original release exactly (for example
`res_net50/~/block_group_0/~/block_0/~/conv_0`), because the released
checkpoints are Haiku parameter dicts keyed by these names.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from byol.utils import cpu_kernels
from byol.utils import precision
from byol.utils import resnet_blocks

# Per-group stride of the four block groups; the first group keeps the
# resolution because the stem already downsamples by 4.
_GROUP_STRIDES = (1, 2, 2, 2)


def _with_bn_defaults(bn_config: Mapping[str, Any] | None) -> dict[str, Any]:
  """Returns a copy of `bn_config` with BYOL's BatchNorm defaults filled in."""
  bn_config = dict(bn_config or {})
  bn_config.setdefault('decay_rate', 0.9)
  bn_config.setdefault('eps', 1e-5)
  bn_config.setdefault('create_scale', True)
  bn_config.setdefault('create_offset', True)
  return bn_config


def _check_per_group(name: str, values: Sequence[Any]) -> None:
  """Raises unless `values` has one entry per block group (four)."""
  if len(values) != len(_GROUP_STRIDES):
    raise ValueError(
      f'`{name}` must have {len(_GROUP_STRIDES)} entries (one per block '
      f'group), got {len(values)}: {values!r}.'
    )


def _is_positive_int(value: Any) -> bool:
  """True for ints > 0; bools are rejected although they are ints."""
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


class ResNetTorso(hk.Module):
  """ResNet encoder: stem, four block groups, global average pool.

  With `num_classes=None` (BYOL) it returns the embedding `[B, D]` with
  `D = channels_per_group[-1] * width_multiplier`; otherwise a zero-initialised
  `logits` layer maps the embedding to `[B, num_classes]`.
  """

  def __init__(
    self,
    blocks_per_group: Sequence[int],
    num_classes: int | None = None,
    bn_config: Mapping[str, Any] | None = None,
    resnet_v2: bool = False,
    bottleneck: bool = True,
    channels_per_group: Sequence[int] = (256, 512, 1024, 2048),
    use_projection: Sequence[bool] = (True, True, True, True),
    width_multiplier: int = 1,
    use_cpu_kernels: bool = False,
    zero_init_residual: bool = False,
    small_image_stem: bool = False,
    name: str | None = None,
  ):
    """Creates the stem, the block groups and (optionally) the logits layer.

    Args:
      blocks_per_group: number of blocks in each of the four groups.
      num_classes: size of the logits layer; None for no logits layer.
      bn_config: keyword arguments of `BatchNorm`; missing entries
        default to decay_rate 0.9, eps 1e-5, with scale and offset.
      resnet_v2: pre-activation (v2) blocks instead of v1 blocks.
      bottleneck: bottleneck blocks (ResNet-50 and deeper) or basic ones.
      channels_per_group: output channels of each group before widening.
      use_projection: whether each group's first block projects its shortcut.
      width_multiplier: integer factor applied to every channel count.
      use_cpu_kernels: compute the 2x2-map convolutions and the max-pool gradient the ways
        that are fast on XLA:CPU (`cpu_kernels`): the same parameters and, up to float32
        rounding, the same values and gradients. A plain bool, resolved by the caller outside
        traced code.
      zero_init_residual: start the scale of the last BatchNorm of each (v1) residual block at 0,
        so that each block starts as the identity (Goyal et al. 2017). The released code's Haiku
        bottleneck blocks did this; the paper's networks, and this default, do not.
      small_image_stem: for images of about 32 px (CIFAR): the stem is a 3x3 convolution of
        stride 1 and no max-pool, so the first block group sees the full resolution instead of a
        quarter of it (the stem SimCLR and most CIFAR codebases use). The parameters keep their
        names; `initial_conv/w` is [3, 3, 3, 64 * width] instead of [7, 7, 3, 64 * width].
      name: module name; defaults to the snake-cased class name.

    Raises:
      ValueError: on malformed per-group sequences, channel counts or widths.
    """
    super().__init__(name=name)
    for arg_name, values in (
      ('blocks_per_group', blocks_per_group),
      ('channels_per_group', channels_per_group),
      ('use_projection', use_projection),
    ):
      _check_per_group(arg_name, values)
    if not all(_is_positive_int(n) for n in blocks_per_group):
      raise ValueError(
        f'`blocks_per_group` entries must be positive ints, got {blocks_per_group!r}.'
      )
    if not all(_is_positive_int(c) for c in channels_per_group):
      raise ValueError(
        f'`channels_per_group` entries must be positive ints, got {channels_per_group!r}.'
      )
    if bottleneck and any(c % 4 for c in channels_per_group):
      raise ValueError(
        'Bottleneck blocks reduce to a quarter of their channels, so '
        '`channels_per_group` entries must be multiples of 4, got '
        f'{channels_per_group!r}.'
      )
    if not _is_positive_int(width_multiplier):
      raise ValueError(
        f'`width_multiplier` must be a positive int (1, 2, 4, ...), got {width_multiplier!r}.'
      )
    if zero_init_residual and resnet_v2:
      raise ValueError(
        '`zero_init_residual` applies to v1 blocks, whose last BatchNorm ends the '
        'residual branch; pre-activation (v2) blocks end on a convolution.'
      )
    if num_classes is not None and not _is_positive_int(num_classes):
      raise ValueError(
        f'`num_classes` must be None (no logits layer) or a positive int, got {num_classes!r}.'
      )

    bn_config = _with_bn_defaults(bn_config)
    self.resnet_v2 = resnet_v2
    self.use_cpu_kernels = use_cpu_kernels
    self.small_image_stem = small_image_stem
    kernel, stride = (3, 1) if small_image_stem else (7, 2)
    self.initial_conv = resnet_blocks.conv2d(
      64 * width_multiplier, kernel, stride, 'initial_conv', use_cpu_kernels
    )
    if not resnet_v2:
      self.initial_batchnorm = precision.BatchNorm(name='initial_batchnorm', **bn_config)
    self.block_groups = [
      resnet_blocks.BlockGroup(
        channels=channels_per_group[i] * width_multiplier,
        num_blocks=blocks_per_group[i],
        stride=_GROUP_STRIDES[i],
        bn_config=bn_config,
        resnet_v2=resnet_v2,
        bottleneck=bottleneck,
        use_projection=use_projection[i],
        use_cpu_kernels=use_cpu_kernels,
        zero_init_residual=zero_init_residual,
        name=f'block_group_{i}',
      )
      for i in range(len(_GROUP_STRIDES))
    ]
    if resnet_v2:
      # Pre-activation blocks leave their sum un-normalised.
      self.final_batchnorm = precision.BatchNorm(name='final_batchnorm', **bn_config)
    self.logits = None
    if num_classes is not None:
      self.logits = hk.Linear(num_classes, w_init=jnp.zeros, name='logits')

  def __call__(
    self, inputs: jax.Array, is_training: bool, test_local_stats: bool = False
  ) -> jax.Array:
    """Maps images `[B, H, W, 3]` to `[B, D]` (or `[B, num_classes]`).

    Args:
      inputs: normalised images, `[B, H, W, C]`.
      is_training: use batch statistics and update the BatchNorm averages.
      test_local_stats: in inference mode, use batch statistics anyway.
    """
    out = self.initial_conv(inputs)  # [B, H/2, W/2, 64 * width] ([B, H, W, ...] small-image stem)
    if not self.resnet_v2:
      out = self.initial_batchnorm(out, is_training, test_local_stats)
      out = jax.nn.relu(out)
    if not self.small_image_stem:  # Which keeps the input's resolution: no max-pool.
      if self.use_cpu_kernels:  # hk.max_pool's values and gradients, the gradient faster on CPU.
        out = cpu_kernels.max_pool(out, window=3, stride=2)
      else:
        out = hk.max_pool(out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding='SAME')
    for block_group in self.block_groups:
      out = block_group(out, is_training, test_local_stats)
    if self.resnet_v2:
      out = self.final_batchnorm(out, is_training, test_local_stats)
      out = jax.nn.relu(out)
    out = jnp.mean(out, axis=(1, 2))  # [B, D]
    if self.logits is not None:
      out = self.logits(out)  # [B, num_classes]
    return out


class _ResNetPreset(ResNetTorso):
  """A ResNetTorso whose depth and channels come from class attributes."""

  blocks_per_group: tuple[int, int, int, int]
  bottleneck: bool = True
  channels_per_group: tuple[int, int, int, int] = (256, 512, 1024, 2048)

  def __init__(
    self,
    num_classes: int | None = None,
    bn_config: Mapping[str, Any] | None = None,
    resnet_v2: bool = False,
    width_multiplier: int = 1,
    use_cpu_kernels: bool = False,
    zero_init_residual: bool = False,
    small_image_stem: bool = False,
    name: str | None = None,
  ):
    """Creates the preset; arguments as in `ResNetTorso`.

    The default name is the snake-cased class name (`res_net50` for
    `ResNet50`), which prefixes every parameter of the checkpoints.
    """
    super().__init__(
      blocks_per_group=self.blocks_per_group,
      num_classes=num_classes,
      bn_config=bn_config,
      resnet_v2=resnet_v2,
      bottleneck=self.bottleneck,
      channels_per_group=self.channels_per_group,
      width_multiplier=width_multiplier,
      use_cpu_kernels=use_cpu_kernels,
      zero_init_residual=zero_init_residual,
      small_image_stem=small_image_stem,
      name=name,
    )


class TinyResNet(_ResNetPreset):
  """One basic block of 8 channels per group: for tests and quick runs."""

  blocks_per_group = (1, 1, 1, 1)
  bottleneck = False
  channels_per_group = (8, 8, 8, 8)


class ResNet18(_ResNetPreset):
  """ResNet-18: basic blocks (2, 2, 2, 2), 512-d embedding."""

  blocks_per_group = (2, 2, 2, 2)
  bottleneck = False
  channels_per_group = (64, 128, 256, 512)


class ResNet34(_ResNetPreset):
  """ResNet-34: basic blocks (3, 4, 6, 3), 512-d embedding."""

  blocks_per_group = (3, 4, 6, 3)
  bottleneck = False
  channels_per_group = (64, 128, 256, 512)


class ResNet50(_ResNetPreset):
  """ResNet-50: bottleneck blocks (3, 4, 6, 3), 2048-d embedding."""

  blocks_per_group = (3, 4, 6, 3)


class ResNet101(_ResNetPreset):
  """ResNet-101: bottleneck blocks (3, 4, 23, 3), 2048-d embedding."""

  blocks_per_group = (3, 4, 23, 3)


class ResNet152(_ResNetPreset):
  """ResNet-152: bottleneck blocks (3, 8, 36, 3), 2048-d embedding."""

  blocks_per_group = (3, 8, 36, 3)


class ResNet200(_ResNetPreset):
  """ResNet-200: bottleneck blocks (3, 24, 36, 3), 2048-d embedding."""

  blocks_per_group = (3, 24, 36, 3)


ENCODERS: dict[str, type[ResNetTorso]] = {
  encoder.__name__: encoder
  for encoder in (TinyResNet, ResNet18, ResNet34, ResNet50, ResNet101, ResNet152, ResNet200)
}


def get_encoder(name: str) -> type[ResNetTorso]:
  """Returns the encoder class called `name` (e.g. 'ResNet50').

  Raises:
    ValueError: if no encoder has that name; the message lists the valid ones.
  """
  if name not in ENCODERS:
    raise ValueError(f'Unknown encoder {name!r}; valid names are {", ".join(ENCODERS)}.')
  return ENCODERS[name]


class MLP(hk.Module):
  """Projector/predictor head: Linear -> BatchNorm -> ReLU -> Linear."""

  def __init__(
    self, name: str, hidden_size: int, output_size: int, bn_config: Mapping[str, Any] | None = None
  ):
    """Stores the sizes; the layers are created when the module is called.

    Args:
      name: module name ('projector' or 'predictor' in BYOL).
      hidden_size: width of the hidden layer (4096 in BYOL).
      output_size: width of the output (256 in BYOL).
      bn_config: keyword arguments of the `BatchNorm`; defaults as in
      `ResNetTorso`.
    """
    super().__init__(name=name)
    self.hidden_size = hidden_size
    self.output_size = output_size
    self.bn_config = _with_bn_defaults(bn_config)

  def __call__(self, inputs: jax.Array, is_training: bool) -> jax.Array:
    """Maps `[B, D_in]` to `[B, output_size]`."""
    # Layers built here (not in __init__) are named `<name>/linear`,
    # `<name>/batch_norm`, `<name>/linear_1`, as in the released checkpoints.
    out = hk.Linear(self.hidden_size, with_bias=True)(inputs)  # [B, hidden]
    out = precision.BatchNorm(**self.bn_config)(out, is_training=is_training)
    out = jax.nn.relu(out)
    # The output layer has no bias in the original (and its checkpoints).
    return hk.Linear(self.output_size, with_bias=False)(out)  # [B, output]
