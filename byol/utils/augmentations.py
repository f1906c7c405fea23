"""On-device (JAX) image augmentations of BYOL, run in the jitted update (SPEC section 6).

Each view of a batch `[B, H, W, 3]` (float in [0, 1]) goes through, in this order: random
horizontal flip, colour transform (colour jitter in a random order, then grayscale), Gaussian blur,
solarize and a final clip to [0, 1]. Every image gets its own random draws.

The work is split in two so that the draws can be inspected (tests) and reused (fused fast paths):
`draw_decisions` makes every per-image random choice (`Decisions`, arrays of shape [B]) and
`apply_decisions` computes the images. Ops run on the whole batch and a per-image `jnp.where` picks
the result; an op whose probability is 0 is never computed and one whose probability is 1 needs no
select (both decided statically from the config).

The ops work on channel-major images, `[3, B, H, W]`: one contiguous plane per channel.
`apply_decisions` transposes once on the way in and once on the way out. Colour ops read the three
channels of each pixel; in the channel-last layout, XLA:CPU fused those reads into their consumers
and computed the producing op again for every channel that read it, which made the augmentations
twice as slow.
"""

import itertools
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from byol.utils import cpu_kernels

# The original's augment_config: one nested dict per view.
VIEW1_PRESET = dict(
  random_flip=True,
  color_transform=dict(
    apply_prob=1.0,
    brightness=0.4,
    contrast=0.4,
    saturation=0.2,
    hue=0.1,
    color_jitter_prob=0.8,
    to_grayscale_prob=0.2,
    shuffle=True,
  ),
  gaussian_blur=dict(apply_prob=1.0, blur_divider=10.0, sigma_min=0.1, sigma_max=2.0),
  solarize=dict(apply_prob=0.0, threshold=0.5),
)
VIEW2_PRESET = dict(
  random_flip=True,
  color_transform=dict(VIEW1_PRESET['color_transform']),
  gaussian_blur=dict(VIEW1_PRESET['gaussian_blur'], apply_prob=0.1),
  solarize=dict(VIEW1_PRESET['solarize'], apply_prob=0.2),
)
AUGMENT_CONFIG = {'view1': VIEW1_PRESET, 'view2': VIEW2_PRESET}

# Luma weights of the grayscale op (SPEC section 6).
_GRAYSCALE_WEIGHTS = (0.2989, 0.5870, 0.1140)

# Colour jitter ops, by index in an order: 0 brightness, 1 contrast, 2 saturation, 3 hue.
# `JITTER_ORDERS[i]` is the i-th of the 24 orders; order 0 is the fixed (unshuffled) one.
JITTER_ORDERS = np.array(list(itertools.permutations(range(4))), np.int32)  # [24, 4]

# Random order of the jitter ops without computing all four ops in each of four slots.
# Brightness and contrast are one cheap affine map per image, `x * f + (mean * (1 - f) + d)`
# (f = 1 for brightness, d = 0 for contrast, f = 1 and d = 0 for none), so an 'r' slot applies
# either of them, or nothing, for the price of one. Saturation and hue cost an HSV round trip each,
# but they touch different HSV channels and the RGB clip between them is a no-op (HSV with s and v
# in [0, 1] maps into [0, 1]), so when they are adjacent in an order one 'h' slot applies both.
# Every one of the 24 orders then embeds, in sequence, into the fixed slots below (`_slot_table`
# raises at import if one did not): two HSV round trips and four affine maps per image, against
# eight round trips for four slots of all four ops.
_SLOT_KINDS = 'rhrrhr'


def _slot_table(orders: np.ndarray) -> np.ndarray:
  """[num_orders, num_slots] bit masks (1 << op) of the jitter ops each slot applies per order."""
  table = np.zeros((len(orders), len(_SLOT_KINDS)), np.int32)
  for row, order in enumerate(orders):
    next_slot = 0
    for position, op in enumerate(order):
      is_hsv = op >= 2
      if is_hsv and position > 0 and order[position - 1] >= 2:
        table[row, next_slot - 1] |= 1 << op  # Shares the previous op's HSV round trip.
        continue
      next_slot = _SLOT_KINDS.index('h' if is_hsv else 'r', next_slot)
      table[row, next_slot] |= 1 << op
      next_slot += 1
  return table


_SLOT_TABLE = _slot_table(JITTER_ORDERS)  # [24, 6]


class Decisions(NamedTuple):
  """Every random choice for one view, one entry per image (all arrays have shape [B])."""

  flip: jax.Array  # bool
  color_jitter: jax.Array  # bool: colour transform applied and jitter drawn.
  jitter_order: jax.Array  # int32 index into JITTER_ORDERS.
  brightness_delta: jax.Array
  contrast_factor: jax.Array
  saturation_factor: jax.Array
  hue_delta: jax.Array
  grayscale: jax.Array  # bool: colour transform applied and grayscale drawn.
  blur: jax.Array  # bool
  blur_sigma: jax.Array
  solarize: jax.Array  # bool


def _per_image(values: jax.Array) -> jax.Array:
  """[B] -> [1, B, 1, 1], to broadcast a per-image value over channel-major [3, B, H, W]."""
  return values[None, :, None, None]


def _per_plane(values: jax.Array) -> jax.Array:
  """[B] -> [B, 1, 1], to broadcast a per-image value over one channel's plane [B, H, W]."""
  return values[:, None, None]


def random_flip(images: jax.Array, flip: jax.Array) -> jax.Array:
  """Reverses the width axis of [3, B, H, W] where `flip` [B] is True (drawn by the caller)."""
  return jnp.where(_per_image(flip), images[..., ::-1], images)


def adjust_brightness(images: jax.Array, delta: jax.Array) -> jax.Array:
  """Adds `delta` [B] to every pixel of each image [3, B, H, W] (no clipping)."""
  return images + _per_image(delta)


def adjust_contrast(images: jax.Array, factor: jax.Array) -> jax.Array:
  """Scales each image by `factor` [B] around its per-channel spatial mean (no clipping)."""
  mean = jnp.mean(images, axis=(2, 3), keepdims=True)  # [3, B, 1, 1]
  return (images - mean) * _per_image(factor) + mean


def rgb_to_hsv(images: jax.Array) -> jax.Array:
  """RGB [3, ...] in [0, 1] -> HSV [3, ...], hue in [0, 1] (1 only by rounding, same as 0).

  Grey pixels (max == min) get hue 0 and black ones saturation 0: the divisions are guarded, so no
  NaN and no division by zero.
  """
  red, green, blue = images[0], images[1], images[2]
  value = jnp.maximum(jnp.maximum(red, green), blue)
  chroma = value - jnp.minimum(jnp.minimum(red, green), blue)
  saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
  inverse_chroma = 1.0 / jnp.where(chroma > 0, chroma, 1.0)
  # Which channel is the largest (red first on ties, then green), by comparing the channels
  # rather than testing `value == red`: XLA may recompute a fused input in each consumer, rounded
  # differently (FMA or not), and an equality that fails by one ulp would pick the wrong formula.
  red_largest = (red >= green) & (red >= blue)
  green_largest = ~red_largest & (green >= blue)
  # Hue in sixths of the circle, in [-1, 5), measured from the largest channel.
  hue = jnp.where(
    red_largest,
    (green - blue) * inverse_chroma,
    jnp.where(
      green_largest, 2.0 + (blue - red) * inverse_chroma, 4.0 + (red - green) * inverse_chroma
    ),
  )
  # A select instead of a float modulo: XLA lowers that to an fmod, several times slower on CPU.
  hue = jnp.where(chroma > 0, jnp.where(hue < 0, hue + 6.0, hue) / 6.0, 0.0)
  return jnp.stack([hue, saturation, value])


def hsv_to_rgb(images: jax.Array) -> jax.Array:
  """HSV [3, ...] -> RGB [3, ...]; any hue is taken modulo 1."""
  hue, saturation, value = images[0], images[1], images[2]
  channels = []
  # Each channel is value - chroma * ramp, the ramp a trapezoid of the hue shifted per channel
  # (R, G, B read it 5, 3 and 1 sixths ahead); the modulo also wraps hues outside [0, 1).
  for shift in (5.0, 3.0, 1.0):
    position = hue * 6.0 + shift
    position = position - 6.0 * jnp.floor(position / 6.0)  # Modulo 6, without an fmod.
    ramp = jnp.clip(jnp.minimum(position, 4.0 - position), 0.0, 1.0)
    channels.append(value - value * saturation * ramp)
  return jnp.stack(channels)


def _adjust_hsv(images: jax.Array, saturation_factor: jax.Array, hue_delta: jax.Array) -> jax.Array:
  """Saturation times `saturation_factor` [B] (clipped to [0, 1]) and hue plus `hue_delta` [B]."""
  hue, saturation, value = rgb_to_hsv(images)  # 3 x [B, H, W]
  hue = hue + _per_plane(hue_delta)  # hsv_to_rgb takes it modulo 1.
  saturation = jnp.clip(saturation * _per_plane(saturation_factor), 0.0, 1.0)
  return hsv_to_rgb(jnp.stack([hue, saturation, value]))


def adjust_saturation(images: jax.Array, factor: jax.Array) -> jax.Array:
  """Multiplies the HSV saturation of each image by `factor` [B], clipped to [0, 1]."""
  return _adjust_hsv(images, factor, jnp.zeros_like(factor))


def adjust_hue(images: jax.Array, delta: jax.Array) -> jax.Array:
  """Adds `delta` [B] to the HSV hue of each image, modulo 1."""
  return _adjust_hsv(images, jnp.ones_like(delta), delta)


def color_jitter(
  images: jax.Array,
  brightness_delta: jax.Array,
  contrast_factor: jax.Array,
  saturation_factor: jax.Array,
  hue_delta: jax.Array,
  order: jax.Array | None = None,
) -> jax.Array:
  """Brightness, contrast, saturation and hue of [3, B, H, W] (per-image [B] parameters), clipped.

  Each op is followed by a clip to [0, 1]. `order` [B] indexes JITTER_ORDERS per image; None
  applies the fixed order (brightness, contrast, saturation, hue) and lets the unused slots of the
  scheme above be skipped at trace time.
  """
  if order is None:
    table = _SLOT_TABLE[:1]
    order = jnp.zeros(images.shape[1:2], jnp.int32)
  else:
    table = _SLOT_TABLE
  for slot, kind in enumerate(_SLOT_KINDS):
    if not table[:, slot].any():
      continue
    ops = jnp.asarray(table[:, slot])[order]  # [B] bit masks of the ops applied in this slot.

    def uses(op: int) -> jax.Array:
      return (ops & (1 << op)) != 0

    if kind == 'r':
      factor = jnp.where(uses(1), contrast_factor, 1.0)
      delta = jnp.where(uses(0), brightness_delta, 0.0)
      mean = jnp.mean(images, axis=(2, 3), keepdims=True)  # [3, B, 1, 1]
      # With factor 1 the offset is exactly delta, so brightness alone is exactly x + delta.
      images = images * _per_image(factor) + (mean * _per_image(1.0 - factor) + _per_image(delta))
    else:
      images = _adjust_hsv(
        images, jnp.where(uses(2), saturation_factor, 1.0), jnp.where(uses(3), hue_delta, 0.0)
      )
    images = jnp.clip(images, 0.0, 1.0)
  return images


def to_grayscale(images: jax.Array) -> jax.Array:
  """0.2989 R + 0.5870 G + 0.1140 B of [3, ...], repeated on the three channels."""
  # A weighted sum rather than a dot with the weights: exact float32 on every backend (no TPU
  # bfloat16 matmul passes) and fused with its neighbours.
  red, green, blue = images[0], images[1], images[2]
  gray = _GRAYSCALE_WEIGHTS[0] * red + _GRAYSCALE_WEIGHTS[1] * green + _GRAYSCALE_WEIGHTS[2] * blue
  return jnp.broadcast_to(gray, images.shape)


def _blur_along(images: jax.Array, kernel: jax.Array, axis: int) -> jax.Array:
  """Per-image 1-D blur of [3, B, H, W] with `kernel` [B, taps] along `axis`, zero-padded."""
  radius = (kernel.shape[1] - 1) // 2
  padding = [(0, 0)] * images.ndim
  padding[axis] = (radius, radius)
  padded = jnp.pad(images, padding)
  size = images.shape[axis]
  # One shifted slice per tap: a single fused elementwise kernel, exact in float32 (a grouped
  # convolution with 3 * B groups would need a transpose and may run at reduced precision).
  return sum(
    _per_image(kernel[:, tap]) * jax.lax.slice_in_dim(padded, tap, tap + size, axis=axis)
    for tap in range(kernel.shape[1])
  )


def gaussian_blur(
  images: jax.Array, sigma: jax.Array, radius: int, use_cpu_kernels: bool = False
) -> jax.Array:
  """Separable Gaussian blur of [3, B, H, W]: `2 * radius + 1` taps, per-image `sigma` [B], SAME.

  Depthwise (each channel on its own), vertical then horizontal, zero-padded; the kernel sums
  to 1. `use_cpu_kernels` computes it as matrix products, faster on XLA:CPU
  (`cpu_kernels.blur_as_products`).
  """
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)  # [taps]
  kernel = jnp.exp(-jnp.square(offsets) / (2.0 * jnp.square(sigma[:, None])))  # [B, taps]
  kernel = kernel / jnp.sum(kernel, axis=1, keepdims=True)
  if use_cpu_kernels:
    return cpu_kernels.blur_as_products(images, kernel)
  return _blur_along(_blur_along(images, kernel, axis=2), kernel, axis=3)


def solarize(images: jax.Array, threshold: float) -> jax.Array:
  """x -> 1 - x where x >= threshold."""
  return jnp.where(images >= threshold, 1.0 - images, images)


def draw_decisions(rng: jax.Array, batch_size: int, view_config: Mapping[str, Any]) -> Decisions:
  """Draws every per-image random choice of one view (keys as in VIEW1_PRESET)."""
  color = view_config['color_transform']
  blur = view_config['gaussian_blur']
  uniforms_rng, order_rng = jax.random.split(rng)
  (
    flip_u,
    color_u,
    jitter_u,
    grayscale_u,
    blur_u,
    solarize_u,
    brightness_u,
    contrast_u,
    saturation_u,
    hue_u,
    sigma_u,
  ) = jax.random.uniform(uniforms_rng, (11, batch_size))

  def between(u: jax.Array, low: float, high: float) -> jax.Array:
    return low + (high - low) * u

  # u < p with u in [0, 1): always False for p = 0 and always True for p = 1, which is what lets
  # `apply_decisions` skip those ops and selects statically.
  color_applied = color_u < color['apply_prob']
  if color['shuffle']:
    order = jax.random.randint(order_rng, (batch_size,), 0, len(JITTER_ORDERS), jnp.int32)
  else:
    order = jnp.zeros((batch_size,), jnp.int32)
  return Decisions(
    flip=(flip_u < 0.5) if view_config['random_flip'] else jnp.zeros((batch_size,), bool),
    color_jitter=color_applied & (jitter_u < color['color_jitter_prob']),
    jitter_order=order,
    brightness_delta=between(brightness_u, -color['brightness'], color['brightness']),
    contrast_factor=between(contrast_u, 1.0 - color['contrast'], 1.0 + color['contrast']),
    saturation_factor=between(saturation_u, 1.0 - color['saturation'], 1.0 + color['saturation']),
    hue_delta=between(hue_u, -color['hue'], color['hue']),
    grayscale=color_applied & (grayscale_u < color['to_grayscale_prob']),
    blur=blur_u < blur['apply_prob'],
    blur_sigma=between(sigma_u, blur['sigma_min'], blur['sigma_max']),
    solarize=solarize_u < view_config['solarize']['apply_prob'],
  )


def _maybe_apply(
  op: Callable[[jax.Array], jax.Array], images: jax.Array, apply: jax.Array, probability: float
) -> jax.Array:
  """`op(images)` where `apply` [B]; statically skips the op (p = 0) or the select (p = 1)."""
  if probability <= 0:
    return images
  result = op(images)
  if probability >= 1:
    return result
  return jnp.where(_per_image(apply), result, images)


def apply_decisions(
  images: jax.Array,
  decisions: Decisions,
  view_config: Mapping[str, Any],
  use_cpu_kernels: bool = False,
) -> jax.Array:
  """Augments [B, H, W, 3] images with drawn `decisions` (the config decides what is traced).

  `use_cpu_kernels` blurs the way that is fast on XLA:CPU (see `gaussian_blur`).
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'Expected RGB images [B, H, W, 3], got shape {images.shape}.')
  images = jnp.moveaxis(images.astype(jnp.float32), -1, 0)  # [3, B, H, W]
  color = view_config['color_transform']
  blur = view_config['gaussian_blur']
  if view_config['random_flip']:
    images = random_flip(images, decisions.flip)
  order = decisions.jitter_order if color['shuffle'] else None
  images = _maybe_apply(
    lambda x: color_jitter(
      x,
      decisions.brightness_delta,
      decisions.contrast_factor,
      decisions.saturation_factor,
      decisions.hue_delta,
      order,
    ),
    images,
    decisions.color_jitter,
    color['apply_prob'] * color['color_jitter_prob'],
  )
  images = _maybe_apply(
    to_grayscale, images, decisions.grayscale, color['apply_prob'] * color['to_grayscale_prob']
  )
  radius = int(images.shape[2] / blur['blur_divider'] / 2)
  if radius > 0:  # A single tap of weight 1 would leave the images as they are.
    images = _maybe_apply(
      lambda x: gaussian_blur(x, decisions.blur_sigma, radius, use_cpu_kernels),
      images,
      decisions.blur,
      blur['apply_prob'],
    )
  threshold = view_config['solarize']['threshold']
  images = _maybe_apply(
    lambda x: solarize(x, threshold),
    images,
    decisions.solarize,
    view_config['solarize']['apply_prob'],
  )
  return jnp.moveaxis(jnp.clip(images, 0.0, 1.0), 0, -1)  # [B, H, W, 3]


def augment_images(
  images: jax.Array,
  rng: jax.Array,
  *,
  random_flip: bool,
  color_transform: Mapping[str, Any],
  gaussian_blur: Mapping[str, Any],
  solarize: Mapping[str, Any],
  use_cpu_kernels: bool = False,
) -> jax.Array:
  """Augments one view [B, H, W, 3] in [0, 1]; the keywords are those of VIEW1_PRESET.

  `use_cpu_kernels` blurs the way that is fast on XLA:CPU (see `gaussian_blur`).
  """
  view_config = dict(
    random_flip=random_flip,
    color_transform=color_transform,
    gaussian_blur=gaussian_blur,
    solarize=solarize,
  )
  decisions = draw_decisions(rng, images.shape[0], view_config)
  return apply_decisions(images, decisions, view_config, use_cpu_kernels)


def postprocess(
  inputs: Mapping[str, jax.Array],
  rng: jax.Array,
  augment_config: Mapping[str, Mapping[str, Any]] | None = None,
  use_cpu_kernels: bool = False,
) -> dict[str, jax.Array]:
  """Augments `view1` and `view2` of a batch, each with its own key; other entries pass through.

  Batches without views (evaluation batches with 'images') come back unchanged. The augmented
  images are constants for the gradient. `use_cpu_kernels` (a plain bool, resolved outside traced
  code) blurs the way that is fast on XLA:CPU, with the same values up to float32 rounding.
  """
  if 'view1' not in inputs and 'view2' not in inputs:
    return dict(inputs)
  augment_config = AUGMENT_CONFIG if augment_config is None else augment_config
  outputs = dict(inputs)
  for view, view_rng in zip(('view1', 'view2'), jax.random.split(rng)):
    if view in inputs:
      outputs[view] = jax.lax.stop_gradient(
        augment_images(
          inputs[view], view_rng, **augment_config[view], use_cpu_kernels=use_cpu_kernels
        )
      )
  return outputs
