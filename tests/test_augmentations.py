"""On-device augmentations against independent numpy (and colorsys) implementations."""

import colorsys
import copy
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol.utils import augmentations

GRAYSCALE_WEIGHTS = np.array([0.2989, 0.5870, 0.1140])
JITTER_OP_NAMES = ('brightness', 'contrast', 'saturation', 'hue')


def random_images(seed, batch, side):
  return np.random.default_rng(seed).uniform(size=(batch, side, side, 3)).astype(np.float32)


def view_config(**changes):
  """A view config with every op off (probability 0), then `changes`."""
  preset = augmentations.VIEW1_PRESET
  config = dict(
    random_flip=False,
    color_transform=dict(preset['color_transform'], apply_prob=0.0),
    gaussian_blur=dict(preset['gaussian_blur'], apply_prob=0.0),
    solarize=dict(preset['solarize'], apply_prob=0.0),
  )
  config.update(changes)
  return config


def draw_decisions(rng, batch_size, config):
  draw = functools.partial(augmentations.draw_decisions, batch_size=batch_size, view_config=config)
  return jax.jit(draw)(rng)


def channels_last(op):
  """`op` of channel-major arrays [3, ...] (the ops' layout), on channel-last ones [..., 3]."""

  def apply(images, *args, **kwargs):
    return jnp.moveaxis(op(jnp.moveaxis(images, -1, 0), *args, **kwargs), 0, -1)

  return apply


def jitted_augment(config):
  return jax.jit(functools.partial(augmentations.augment_images, **config))


# --- Independent numpy references, one image [H, W, 3] at a time. ---


def np_adjust_hsv(image, saturation_factor=1.0, hue_delta=0.0):
  hue, saturation, value = np.vectorize(colorsys.rgb_to_hsv)(
    image[..., 0], image[..., 1], image[..., 2]
  )
  hue = (hue + hue_delta) % 1.0
  saturation = np.clip(saturation * saturation_factor, 0.0, 1.0)
  return np.stack(np.vectorize(colorsys.hsv_to_rgb)(hue, saturation, value), axis=-1)


def np_jitter_op(name, image, parameter):
  if name == 'brightness':
    return image + parameter
  if name == 'contrast':
    mean = image.mean(axis=(0, 1))
    return (image - mean) * parameter + mean
  if name == 'saturation':
    return np_adjust_hsv(image, saturation_factor=parameter)
  return np_adjust_hsv(image, hue_delta=parameter)


def np_color_jitter(image, parameters, order):
  """`parameters` by op name; ops applied in `order` (op indices), clipping after each."""
  image = image.astype(np.float64)
  for op in order:
    name = JITTER_OP_NAMES[op]
    image = np.clip(np_jitter_op(name, image, parameters[name]), 0.0, 1.0)
  return image


def np_gaussian_blur(image, sigma, radius):
  offsets = np.arange(-radius, radius + 1)
  kernel = np.exp(-(offsets**2) / (2.0 * sigma**2))
  kernel /= kernel.sum()
  # The kernel is symmetric, so convolution is correlation; 'same' zero-pads by the radius.
  blur = functools.partial(np.convolve, kernel, mode='same')
  return np.apply_along_axis(blur, 1, np.apply_along_axis(blur, 0, image))


def np_grayscale(image):
  return np.repeat(image @ GRAYSCALE_WEIGHTS, 3).reshape(image.shape)


def np_solarize(image, threshold=0.5):
  return np.where(image >= threshold, 1.0 - image, image)


# --- Single ops. ---


def test_random_flip_reverses_width_of_selected_images_only():
  images = random_images(0, 4, 5)
  flip = np.array([True, False, True, False])
  flip_op = channels_last(augmentations.random_flip)
  flipped = np.asarray(flip_op(jnp.asarray(images), jnp.asarray(flip)))
  np.testing.assert_array_equal(flipped[flip], images[flip][:, :, ::-1, :])
  np.testing.assert_array_equal(flipped[~flip], images[~flip])


def test_to_grayscale_is_weighted_sum_on_three_equal_channels():
  images = random_images(1, 2, 6)
  gray = np.asarray(channels_last(augmentations.to_grayscale)(jnp.asarray(images)))
  want = images.astype(np.float64) @ GRAYSCALE_WEIGHTS  # [B, H, W]
  for channel in range(3):
    np.testing.assert_allclose(gray[..., channel], want, rtol=0, atol=1e-6)


def test_solarize_inverts_values_at_or_above_threshold_only():
  values = np.array([0.0, 0.2, 0.2999, 0.3, 0.75, 1.0], np.float32).reshape(1, 1, 6, 1)
  solarize = channels_last(augmentations.solarize)
  got = np.asarray(solarize(jnp.asarray(values), threshold=0.3)).ravel()
  np.testing.assert_allclose(got, [0.0, 0.2, 0.2999, 0.7, 0.25, 0.0], rtol=0, atol=1e-7)


# Both ways of computing the blur: shifted slices, and matrix products (the CPU-only route).
blur_routes = pytest.mark.parametrize('use_cpu_kernels', [False, True])


@blur_routes
def test_gaussian_blur_matches_numpy_separable_zero_padded_convolution(use_cpu_kernels):
  images = random_images(2, 3, 9)
  sigma = np.array([0.1, 0.8, 2.0], np.float32)
  blur = jax.jit(
    channels_last(augmentations.gaussian_blur), static_argnames=('radius', 'use_cpu_kernels')
  )
  got = np.asarray(
    blur(jnp.asarray(images), jnp.asarray(sigma), radius=3, use_cpu_kernels=use_cpu_kernels)
  )
  for image, image_sigma, image_got in zip(images, sigma, got):
    np.testing.assert_allclose(
      image_got, np_gaussian_blur(image, image_sigma, 3), rtol=0, atol=1e-6
    )


@blur_routes
def test_gaussian_blur_of_non_square_images_matches_numpy(use_cpu_kernels):
  images = np.random.default_rng(7).uniform(size=(2, 10, 15, 3)).astype(np.float32)
  sigma = np.array([0.6, 1.7], np.float32)
  blur = channels_last(augmentations.gaussian_blur)
  got = np.asarray(
    blur(jnp.asarray(images), jnp.asarray(sigma), radius=4, use_cpu_kernels=use_cpu_kernels)
  )
  for image, image_sigma, image_got in zip(images, sigma, got):
    np.testing.assert_allclose(
      image_got, np_gaussian_blur(image, image_sigma, 4), rtol=0, atol=1e-6
    )


@blur_routes
def test_gaussian_blur_keeps_constant_image_constant_away_from_border(use_cpu_kernels):
  radius = 2
  images = np.full((2, 10, 10, 3), 0.7, np.float32)
  sigma = jnp.array([0.5, 2.0])
  blur = jax.jit(
    channels_last(augmentations.gaussian_blur), static_argnames=('radius', 'use_cpu_kernels')
  )
  got = np.asarray(blur(jnp.asarray(images), sigma, radius=radius, use_cpu_kernels=use_cpu_kernels))
  np.testing.assert_allclose(got[:, radius:-radius, radius:-radius], 0.7, rtol=0, atol=1e-6)
  # Zero padding darkens the border, most at the corners of the widest kernel.
  assert got[1, 0, 0, 0] < got[1, 0, 5, 0] < 0.7


# --- HSV and the colour jitter ops. ---


def test_rgb_to_hsv_matches_colorsys():
  pixels = random_images(3, 1, 16)[0].reshape(-1, 3)
  got = np.asarray(jax.jit(channels_last(augmentations.rgb_to_hsv))(jnp.asarray(pixels)))
  want = np.array([colorsys.rgb_to_hsv(*pixel) for pixel in pixels.astype(np.float64)])
  hue_difference = np.abs(got[:, 0] - want[:, 0])
  np.testing.assert_array_less(np.minimum(hue_difference, 1.0 - hue_difference), 1e-5)
  np.testing.assert_allclose(got[:, 1:], want[:, 1:], rtol=0, atol=1e-6)


def test_rgb_to_hsv_gives_zero_hue_and_saturation_on_grey_and_black_pixels():
  pixels = jnp.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]])
  got = np.asarray(jax.jit(channels_last(augmentations.rgb_to_hsv))(pixels))
  np.testing.assert_array_equal(got, [[0.0, 0.0, 0.0], [0.0, 0.0, 0.5], [0.0, 0.0, 1.0]])


def test_hsv_round_trip_recovers_rgb():
  special = np.array(
    [
      [0, 0, 0],
      [1, 1, 1],
      [0.3, 0.3, 0.3],
      [1, 0, 0],
      [0, 1, 0],
      [0, 0, 1],
      [1, 1, 0],
      [0, 1, 1],
      [1, 0, 1],
      [0.2, 0.2, 0.9],
      [0.9, 0.2, 0.2001],
    ],
    np.float32,
  )
  pixels = np.concatenate([special, random_images(4, 1, 20)[0].reshape(-1, 3)])
  round_trip = channels_last(lambda rgb: augmentations.hsv_to_rgb(augmentations.rgb_to_hsv(rgb)))
  got = jax.jit(round_trip)(pixels)
  np.testing.assert_allclose(np.asarray(got), pixels, rtol=0, atol=1e-5)


def test_hsv_to_rgb_wraps_hue_modulo_one():
  hsv = jnp.array([[0.25, 0.6, 0.8], [1.25, 0.6, 0.8], [-0.75, 0.6, 0.8]])
  got = np.asarray(jax.jit(channels_last(augmentations.hsv_to_rgb))(hsv))
  want = colorsys.hsv_to_rgb(0.25, 0.6, 0.8)
  np.testing.assert_allclose(got, np.tile(want, (3, 1)), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
  'name, parameters',
  [
    ('brightness', [-0.4, 0.1, 0.35]),
    ('contrast', [0.6, 1.0, 1.4]),
    ('saturation', [0.8, 1.05, 1.2]),
    ('hue', [-0.1, 0.02, 0.1]),
  ],
)
def test_jitter_op_matches_numpy(name, parameters):
  images = random_images(5, 3, 6)
  adjust = jax.jit(channels_last(getattr(augmentations, f'adjust_{name}')))
  got = np.asarray(adjust(jnp.asarray(images), jnp.asarray(parameters, jnp.float32)))
  for image, parameter, image_got in zip(images, parameters, got):
    want = np_jitter_op(name, image.astype(np.float64), parameter)
    np.testing.assert_allclose(image_got, want, rtol=0, atol=2e-6)


def jitter_parameters(batch):
  draws = np.random.default_rng(6).uniform(size=(4, batch))
  return dict(
    brightness=-0.4 + 0.8 * draws[0],
    contrast=0.6 + 0.8 * draws[1],
    saturation=0.8 + 0.4 * draws[2],
    hue=-0.1 + 0.2 * draws[3],
  )


def test_color_jitter_applies_ops_in_each_of_the_24_orders():
  num_orders = len(augmentations.JITTER_ORDERS)
  images = random_images(7, num_orders, 5)
  parameters = jitter_parameters(num_orders)
  factors = [jnp.asarray(parameters[name], jnp.float32) for name in JITTER_OP_NAMES]
  got = np.asarray(
    jax.jit(channels_last(augmentations.color_jitter))(
      jnp.asarray(images), *factors, order=jnp.arange(num_orders)
    )
  )
  assert sorted(map(tuple, augmentations.JITTER_ORDERS)) == list(itertools.permutations(range(4)))
  for index, (image, image_got) in enumerate(zip(images, got)):
    image_parameters = {name: values[index] for name, values in parameters.items()}
    want = np_color_jitter(image, image_parameters, augmentations.JITTER_ORDERS[index])
    np.testing.assert_allclose(image_got, want, rtol=0, atol=1e-5, err_msg=f'order {index}')


def test_color_jitter_without_order_applies_brightness_contrast_saturation_hue():
  images = random_images(8, 4, 5)
  parameters = jitter_parameters(4)
  factors = [jnp.asarray(parameters[name], jnp.float32) for name in JITTER_OP_NAMES]
  jitter = jax.jit(channels_last(augmentations.color_jitter))
  got = np.asarray(jitter(jnp.asarray(images), *factors))
  for index, (image, image_got) in enumerate(zip(images, got)):
    image_parameters = {name: values[index] for name, values in parameters.items()}
    want = np_color_jitter(image, image_parameters, order=(0, 1, 2, 3))
    np.testing.assert_allclose(image_got, want, rtol=0, atol=1e-5)


# --- Decisions: how often each op is drawn, and that the draws drive the output. ---

RATE_IMAGES = 2000


def assert_rate(mask, probability, name):
  rate = float(np.mean(mask))
  tolerance = 4.0 * np.sqrt(probability * (1.0 - probability) / mask.size) + 1e-12
  assert abs(rate - probability) <= tolerance, f'{name}: rate {rate}, expected {probability}'


@pytest.mark.parametrize(
  'view, blur_rate, solarize_rate', [('view1', 1.0, 0.0), ('view2', 0.1, 0.2)]
)
def test_decisions_are_drawn_at_the_view_rates(view, blur_rate, solarize_rate):
  decisions = draw_decisions(jax.random.key(10), RATE_IMAGES, augmentations.AUGMENT_CONFIG[view])
  expected = dict(flip=0.5, color_jitter=0.8, grayscale=0.2, blur=blur_rate, solarize=solarize_rate)
  for name, probability in expected.items():
    assert_rate(np.asarray(getattr(decisions, name)), probability, name)


def test_grayscale_is_drawn_independently_of_jitter():
  decisions = draw_decisions(jax.random.key(11), RATE_IMAGES, augmentations.VIEW1_PRESET)
  jitter, grayscale = np.asarray(decisions.color_jitter), np.asarray(decisions.grayscale)
  assert_rate(grayscale[jitter], 0.2, 'grayscale after jitter')
  assert_rate(grayscale[~jitter], 0.2, 'grayscale without jitter')


def test_jitter_orders_are_uniform_over_the_24_permutations():
  num_draws, num_orders = 24_000, len(augmentations.JITTER_ORDERS)
  decisions = draw_decisions(jax.random.key(12), num_draws, augmentations.VIEW1_PRESET)
  counts = np.bincount(np.asarray(decisions.jitter_order), minlength=num_orders)
  expected = num_draws / num_orders
  np.testing.assert_array_less(np.abs(counts - expected), 4.0 * np.sqrt(expected))


def test_unshuffled_jitter_always_uses_the_fixed_order():
  config = dict(augmentations.VIEW1_PRESET)
  config['color_transform'] = dict(config['color_transform'], shuffle=False)
  decisions = draw_decisions(jax.random.key(13), 100, config)
  np.testing.assert_array_equal(decisions.jitter_order, 0)


@pytest.mark.parametrize(
  'field, low, high',
  [
    ('brightness_delta', -0.4, 0.4),
    ('contrast_factor', 0.6, 1.4),
    ('saturation_factor', 0.8, 1.2),
    ('hue_delta', -0.1, 0.1),
    ('blur_sigma', 0.1, 2.0),
  ],
)
def test_factors_are_uniform_in_their_range_and_differ_per_image(field, low, high):
  decisions = draw_decisions(jax.random.key(14), RATE_IMAGES, augmentations.VIEW1_PRESET)
  values = np.asarray(getattr(decisions, field))
  assert values.dtype == np.float32
  assert low <= values.min() < low + 0.01 * (high - low)
  assert high - 0.01 * (high - low) < values.max() <= high
  # Uniform: the mean of U(low, high) within 4 sigma.
  assert abs(values.mean() - (low + high) / 2) < 4.0 * (high - low) / np.sqrt(12.0 * values.size)
  assert len(np.unique(values)) > 0.99 * values.size


def np_jitter_from_decisions(images, decisions):
  parameters = dict(
    brightness=decisions.brightness_delta,
    contrast=decisions.contrast_factor,
    saturation=decisions.saturation_factor,
    hue=decisions.hue_delta,
  )
  return np.stack(
    [
      np_color_jitter(
        image,
        {name: float(values[index]) for name, values in parameters.items()},
        augmentations.JITTER_ORDERS[int(decisions.jitter_order[index])],
      )
      for index, image in enumerate(images)
    ]
  )


def np_blur_from_decisions(images, decisions):
  radius = int(images.shape[1] / 20)  # int(side / 20) with the preset's blur_divider of 10.
  return np.stack(
    [
      np_gaussian_blur(image, float(sigma), radius)
      for image, sigma in zip(images, decisions.blur_sigma)
    ]
  )


@pytest.mark.parametrize(
  'field, changes, numpy_op',
  [
    ('flip', dict(random_flip=True), lambda images, _: images[:, :, ::-1]),
    (
      'color_jitter',
      dict(
        color_transform=dict(
          augmentations.VIEW1_PRESET['color_transform'],
          color_jitter_prob=0.5,
          to_grayscale_prob=0.0,
        )
      ),
      np_jitter_from_decisions,
    ),
    (
      'grayscale',
      dict(
        color_transform=dict(
          augmentations.VIEW1_PRESET['color_transform'],
          color_jitter_prob=0.0,
          to_grayscale_prob=0.5,
        )
      ),
      lambda images, _: np.stack([np_grayscale(image) for image in images]),
    ),
    (
      'blur',
      dict(gaussian_blur=dict(augmentations.VIEW1_PRESET['gaussian_blur'], apply_prob=0.5)),
      np_blur_from_decisions,
    ),
    (
      'solarize',
      dict(solarize=dict(threshold=0.5, apply_prob=0.5)),
      lambda images, _: np_solarize(images),
    ),
  ],
)
def test_drawn_decisions_drive_the_output(field, changes, numpy_op):
  config = view_config(**changes)
  images = random_images(15, 16, 40)  # 40 pixels: blur radius 2.
  rng = jax.random.key(16)
  decisions = jax.tree.map(np.asarray, draw_decisions(rng, 16, config))
  selected = getattr(decisions, field)
  assert selected.any() and not selected.all()
  got = np.asarray(jitted_augment(config)(images, rng))
  want = np.where(
    selected[:, None, None, None], numpy_op(images.astype(np.float64), decisions), images
  )
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_augment_images_applies_the_decisions_drawn_with_its_key():
  config = augmentations.VIEW2_PRESET

  def augmented_both_ways(images, rng):
    decisions = augmentations.draw_decisions(rng, images.shape[0], config)
    return (
      augmentations.augment_images(images, rng, **config),
      augmentations.apply_decisions(images, decisions, config),
    )

  got, want = jax.jit(augmented_both_ways)(random_images(17, 16, 24), jax.random.key(18))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_probability_zero_or_one_ignores_the_drawn_mask():
  config = view_config(
    solarize=dict(threshold=0.5, apply_prob=0.0),
    gaussian_blur=dict(augmentations.VIEW1_PRESET['gaussian_blur'], apply_prob=1.0),
  )
  images = random_images(19, 2, 20)
  decisions = draw_decisions(jax.random.key(20), 2, config)._replace(
    solarize=jnp.array([True, True]), blur=jnp.array([False, False])
  )
  apply = jax.jit(functools.partial(augmentations.apply_decisions, view_config=config))
  got = np.asarray(apply(jnp.asarray(images), decisions))
  want = np.stack(
    [np_gaussian_blur(image, float(sigma), 1) for image, sigma in zip(images, decisions.blur_sigma)]
  )
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_apply_decisions_rejects_images_without_three_channels():
  config = augmentations.VIEW1_PRESET
  decisions = draw_decisions(jax.random.key(0), 2, config)
  with pytest.raises(ValueError, match=r'\[B, H, W, 3\]'):
    augmentations.apply_decisions(jnp.zeros((2, 8, 8, 1)), decisions, config)


def test_presets_differ_only_in_blur_and_solarize_probabilities():
  view1 = copy.deepcopy(augmentations.VIEW1_PRESET)
  view2 = copy.deepcopy(augmentations.VIEW2_PRESET)
  assert (view1['gaussian_blur'].pop('apply_prob'), view2['gaussian_blur'].pop('apply_prob')) == (
    1.0,
    0.1,
  )
  assert (view1['solarize'].pop('apply_prob'), view2['solarize'].pop('apply_prob')) == (0.0, 0.2)
  assert view1 == view2


# --- The whole on-device pipeline: the order of its stages. ---

# The on-device stages in the order of SPEC section 6. The random resized crop is not one of them:
# it runs earlier, on the host in tf.data (byol/utils/dataset.py), so only this order is tested.
PIPELINE_STAGES = ('flip', 'color_jitter', 'grayscale', 'blur', 'solarize', 'clip')


def np_flip_from_decisions(images, _):
  return images[:, :, ::-1]


def np_grayscale_from_decisions(images, _):
  return np.stack([np_grayscale(image) for image in images])


def np_solarize_from_decisions(images, _):
  return np_solarize(images)


NP_STAGES = dict(
  flip=np_flip_from_decisions,
  color_jitter=np_jitter_from_decisions,
  grayscale=np_grayscale_from_decisions,
  blur=np_blur_from_decisions,
  solarize=np_solarize_from_decisions,
  clip=lambda images, _: np.clip(images, 0.0, 1.0),
)


def np_pipeline(images, decisions, stages):
  """The numpy stages in the order `stages`, each where its decision selects it (clip: always)."""
  images = images.astype(np.float64)
  for stage in stages:
    staged = NP_STAGES[stage](images, decisions)
    selected = True if stage == 'clip' else getattr(decisions, stage)[:, None, None, None]
    images = np.where(selected, staged, images)
  return images


def stage_order_case():
  """Three images and fixed decisions under which every stage changes the result.

  20x20 is the smallest side the preset blurs: radius int(side / 20) = 1, three taps.

  Images 0 and 1 are noise in [0, 1] and go through every stage (1 without grayscale, so that
  colour survives the blur), each with its own jitter order. Image 2 skips the jitter, which
  clips, and reaches outside [0, 1]: tf.data feeds images in [0, 1] and every later stage keeps
  them there, so only such an image shows where the final clip runs (on images 0 and 1 it changes
  nothing anywhere after the jitter). It is a ramp from -0.4 to 1.4 across the width, so that
  grayscale and blur (averages) do not bring it back into [0, 1].
  """
  rng = np.random.default_rng(31)
  ramp = np.linspace(-0.4, 1.4, 20)[None, :, None] + rng.uniform(-0.1, 0.1, size=(20, 20, 3))
  images = np.concatenate([rng.uniform(size=(2, 20, 20, 3)), ramp[None]]).astype(np.float32)
  orders = augmentations.JITTER_ORDERS.tolist()
  decisions = augmentations.Decisions(
    flip=np.array([True, True, False]),
    color_jitter=np.array([True, True, False]),
    jitter_order=np.array([orders.index([3, 0, 2, 1]), orders.index([1, 2, 3, 0]), 0], np.int32),
    brightness_delta=np.array([0.25, -0.3, 0.0], np.float32),
    contrast_factor=np.array([1.3, 0.7, 1.0], np.float32),
    saturation_factor=np.array([1.2, 0.8, 1.0], np.float32),
    hue_delta=np.array([0.08, -0.06, 0.0], np.float32),
    grayscale=np.array([True, False, True]),
    blur=np.array([True, True, True]),
    blur_sigma=np.array([1.5, 0.9, 1.2], np.float32),
    solarize=np.array([True, True, True]),
  )
  return images, decisions


PIPELINE_ATOL = 1e-5


def test_apply_decisions_runs_the_stages_in_the_spec_order():
  # The view-2 preset traces every stage with a per-image select (no probability is 0 or 1),
  # so the fixed decisions alone say which stages each image goes through. A pipeline with a
  # stage moved fails here: the test below checks that every such order (but those no input can
  # tell apart) lands far outside the tolerance.
  images, decisions = stage_order_case()
  apply = jax.jit(
    functools.partial(augmentations.apply_decisions, view_config=augmentations.VIEW2_PRESET)
  )
  got = np.asarray(apply(jnp.asarray(images), jax.tree.map(jnp.asarray, decisions)))
  want = np_pipeline(images, decisions, PIPELINE_STAGES)
  np.testing.assert_allclose(got, want, rtol=0, atol=PIPELINE_ATOL)


def moved_stage_orders():
  """Every order with one stage of PIPELINE_STAGES moved elsewhere (adjacent swaps included)."""
  orders = set()
  for index, stage in enumerate(PIPELINE_STAGES):
    others = PIPELINE_STAGES[:index] + PIPELINE_STAGES[index + 1 :]
    for position in range(len(PIPELINE_STAGES)):
      orders.add(others[:position] + (stage,) + others[position:])
  orders.discard(PIPELINE_STAGES)
  return sorted(orders)


def is_swap_of(order, first, second):
  """Whether `order` is PIPELINE_STAGES with the adjacent stages `first` and `second` swapped."""
  swapped = list(PIPELINE_STAGES)
  index = swapped.index(first)
  swapped[index : index + 2] = [second, first]
  return order == tuple(swapped)


def without_flip(stages):
  return tuple(stage for stage in stages if stage != 'flip')


def test_stage_order_case_tells_every_moved_or_dropped_stage_apart():
  # The test above catches a pipeline with a stage moved or missing only if the numpy result of
  # that pipeline differs from the spec's by far more than its tolerance: this checks it does.
  images, decisions = stage_order_case()
  want = np_pipeline(images, decisions, PIPELINE_STAGES)
  margin = 1000 * PIPELINE_ATOL

  def difference(stages):
    return np.abs(np_pipeline(images, decisions, stages) - want).max()

  for stage in PIPELINE_STAGES:
    dropped = tuple(other for other in PIPELINE_STAGES if other != stage)
    assert difference(dropped) > margin, f'without {stage}'
  for order in moved_stage_orders():
    # No input can reveal these moves, as the stages commute: the flip with every colour op (the
    # contrast's mean is over the whole image) and with the symmetric, zero-padded blur;
    # grayscale with the blur (both linear); solarize with the clip (at threshold 0.5, both send
    # values outside [0, 1] to the same bound). Asserted, so that this list of the test's blind
    # spots stays exact.
    if (
      without_flip(order) == without_flip(PIPELINE_STAGES)
      or is_swap_of(order, 'grayscale', 'blur')
      or is_swap_of(order, 'solarize', 'clip')
    ):
      assert difference(order) < PIPELINE_ATOL / 10, order
    else:
      assert difference(order) > margin, order


# --- postprocess. ---

postprocess = jax.jit(augmentations.postprocess)


def training_batch(view2_equals_view1=False):
  view1 = random_images(21, 8, 8)
  view2 = view1 if view2_equals_view1 else random_images(22, 8, 8)
  return dict(view1=view1, view2=view2, labels=np.arange(8, dtype=np.int32))


def test_postprocess_gives_float32_images_in_unit_range_and_keeps_labels():
  inputs = training_batch()
  outputs = postprocess(inputs, jax.random.key(23))
  for view in ('view1', 'view2'):
    images = np.asarray(outputs[view])
    assert images.dtype == np.float32 and images.shape == inputs[view].shape
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert not np.allclose(images, inputs[view])
  np.testing.assert_array_equal(outputs['labels'], inputs['labels'])


def test_postprocess_is_deterministic_for_a_key_and_varies_with_it():
  inputs = training_batch()
  first = postprocess(inputs, jax.random.key(24))
  again = postprocess(inputs, jax.random.key(24))
  other = postprocess(inputs, jax.random.key(25))
  np.testing.assert_array_equal(first['view1'], again['view1'])
  np.testing.assert_array_equal(first['view2'], again['view2'])
  assert not np.allclose(first['view1'], other['view1'])
  assert not np.allclose(first['view2'], other['view2'])


def test_postprocess_draws_the_two_views_with_different_keys():
  # The same images and the same (cheap) config for both views: only the keys can differ.
  brightness_only = view_config(
    color_transform=dict(
      augmentations.VIEW1_PRESET['color_transform'],
      contrast=0.0,
      saturation=0.0,
      hue=0.0,
      color_jitter_prob=1.0,
      to_grayscale_prob=0.0,
      shuffle=False,
    )
  )
  config = {'view1': brightness_only, 'view2': brightness_only}
  outputs = jax.jit(functools.partial(augmentations.postprocess, augment_config=config))(
    training_batch(view2_equals_view1=True), jax.random.key(26)
  )
  differs = np.abs(np.asarray(outputs['view1']) - np.asarray(outputs['view2'])).max(axis=(1, 2, 3))
  assert np.all(differs > 1e-3)


def test_postprocess_augments_each_view_with_its_config_and_own_key():
  config = {
    'view1': view_config(random_flip=True),
    'view2': view_config(solarize=dict(threshold=0.5, apply_prob=1.0)),
  }
  inputs = training_batch()
  rng = jax.random.key(27)
  outputs = jax.jit(functools.partial(augmentations.postprocess, augment_config=config))(
    inputs, rng
  )
  view1_rng, _ = jax.random.split(rng)
  flip = np.asarray(draw_decisions(view1_rng, 8, config['view1']).flip)
  assert flip.any() and not flip.all()
  want_view1 = np.where(flip[:, None, None, None], inputs['view1'][:, :, ::-1], inputs['view1'])
  np.testing.assert_array_equal(np.asarray(outputs['view1']), want_view1)
  np.testing.assert_allclose(
    np.asarray(outputs['view2']), np_solarize(inputs['view2']), rtol=0, atol=1e-7
  )


def test_postprocess_blocks_gradients():
  inputs = {name: jnp.asarray(value) for name, value in training_batch().items()}

  def augmented_sum(view1):
    outputs = augmentations.postprocess(dict(inputs, view1=view1), jax.random.key(28))
    return jnp.sum(outputs['view1'])

  gradient = jax.jit(jax.grad(augmented_sum))(inputs['view1'])
  np.testing.assert_array_equal(gradient, 0.0)


def test_cpu_kernels_switch_chooses_the_blur_route_with_the_same_numbers():
  """Switched on, the blur is matrix products; off, shifted slices; the images agree."""
  # 40 pixels: blur radius 2 (a radius of 0, below 20 pixels, would skip the blur).
  inputs = dict(
    view1=jnp.asarray(random_images(31, 4, 40)), view2=jnp.asarray(random_images(32, 4, 40))
  )
  outputs, jaxprs = {}, {}
  for use_cpu_kernels in (True, False):
    augment = functools.partial(augmentations.postprocess, use_cpu_kernels=use_cpu_kernels)
    outputs[use_cpu_kernels] = jax.jit(augment)(inputs, jax.random.key(31))
    jaxprs[use_cpu_kernels] = str(jax.make_jaxpr(augment)(inputs, jax.random.key(31)))
  # No other op of the augmentations is a matrix product.
  assert 'dot_general' in jaxprs[True] and 'dot_general' not in jaxprs[False]
  for view in ('view1', 'view2'):
    np.testing.assert_allclose(outputs[True][view], outputs[False][view], rtol=0, atol=1e-6)


def test_postprocess_leaves_evaluation_batches_unchanged():
  inputs = dict(images=random_images(29, 2, 8), labels=np.array([3, 4]))
  outputs = augmentations.postprocess(inputs, jax.random.key(30))
  assert outputs.keys() == inputs.keys()
  for name in inputs:
    assert outputs[name] is inputs[name]
