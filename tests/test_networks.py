"""Tests of byol.utils.networks against SPEC section 3."""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol.utils import cpu_kernels
from byol.utils import networks
from byol.utils import precision
from byol.utils import resnet_blocks

BN_CONFIG = {'decay_rate': 0.9, 'eps': 1e-5, 'create_scale': True, 'create_offset': True}
NUM_CLASSES = 1000
ENCODER_NAMES = (
  'TinyResNet',
  'ResNet18',
  'ResNet34',
  'ResNet50',
  'ResNet101',
  'ResNet152',
  'ResNet200',
)


def _shapes(tree):
  """{module: {name: shape}} of a Haiku params/state dict."""
  return {
    module: {name: tuple(value.shape) for name, value in leaves.items()}
    for module, leaves in tree.items()
  }


def _byol_init_shapes(encoder_class):
  """Abstract params and state of the BYOL forward (SPEC 3) for an encoder."""

  def forward(images):
    net = encoder_class(bn_config=BN_CONFIG, width_multiplier=1)
    projector = networks.MLP('projector', 4096, 256, BN_CONFIG)
    predictor = networks.MLP('predictor', 4096, 256, BN_CONFIG)
    classifier = hk.Linear(NUM_CLASSES, name='classifier')
    embedding = net(images, is_training=True)
    projection = projector(embedding, is_training=True)
    prediction = predictor(projection, is_training=True)
    logits = classifier(jax.lax.stop_gradient(embedding))
    return prediction, logits

  model = hk.transform_with_state(forward)
  images = jnp.zeros((2, 32, 32, 3))
  return jax.eval_shape(model.init, jax.random.key(0), images)


@pytest.fixture(scope='module')
def resnet50_byol():
  return _byol_init_shapes(networks.ResNet50)


@pytest.fixture(scope='module')
def resnet18_byol():
  return _byol_init_shapes(networks.ResNet18)


def _expected_byol_shapes(prefix, blocks_per_group, channels_per_group, bottleneck):
  """Name -> shapes of the BYOL forward, written from the rules of SPEC 3."""
  expected = {}

  def conv(name, kernel, in_channels, out_channels):
    expected[f'{prefix}/~/{name}'] = {'w': (kernel, kernel, in_channels, out_channels)}

  def batchnorm(name, channels):
    expected[f'{prefix}/~/{name}'] = {'scale': (1, 1, 1, channels), 'offset': (1, 1, 1, channels)}

  conv('initial_conv', 7, 3, 64)
  batchnorm('initial_batchnorm', 64)
  in_channels = 64
  for group, (num_blocks, channels) in enumerate(zip(blocks_per_group, channels_per_group)):
    if bottleneck:
      layers = [(1, channels // 4), (3, channels // 4), (1, channels)]
    else:
      layers = [(3, channels), (3, channels)]
    for block in range(num_blocks):
      path = f'block_group_{group}/~/block_{block}/~/'
      if block == 0:
        conv(path + 'shortcut_conv', 1, in_channels, channels)
        batchnorm(path + 'shortcut_batchnorm', channels)
      for i, (kernel, out_channels) in enumerate(layers):
        conv(path + f'conv_{i}', kernel, in_channels, out_channels)
        batchnorm(path + f'batchnorm_{i}', out_channels)
        in_channels = out_channels
  embedding_size = in_channels
  for head, head_inputs in (('projector', embedding_size), ('predictor', 256)):
    expected[f'{head}/linear'] = {'w': (head_inputs, 4096), 'b': (4096,)}
    expected[f'{head}/batch_norm'] = {'scale': (1, 4096), 'offset': (1, 4096)}
    expected[f'{head}/linear_1'] = {'w': (4096, 256)}
  expected['classifier'] = {'w': (embedding_size, NUM_CLASSES), 'b': (NUM_CLASSES,)}
  return expected


def test_resnet18_byol_parameters_match_spec_rules_exactly(resnet18_byol):
  params, _ = resnet18_byol
  expected = _expected_byol_shapes('res_net18', (2, 2, 2, 2), (64, 128, 256, 512), bottleneck=False)
  assert _shapes(params) == expected
  assert len(params) == 49


def test_resnet50_byol_parameters_match_spec_rules_exactly(resnet50_byol):
  params, _ = resnet50_byol
  expected = _expected_byol_shapes(
    'res_net50', (3, 4, 6, 3), (256, 512, 1024, 2048), bottleneck=True
  )
  assert _shapes(params) == expected
  assert len(params) == 113


def test_resnet50_byol_parameters_include_spec_examples(resnet50_byol):
  shapes = _shapes(resnet50_byol[0])
  block = 'res_net50/~/block_group_0/~/block_0/~/'
  assert shapes['res_net50/~/initial_conv'] == {'w': (7, 7, 3, 64)}
  assert shapes['res_net50/~/initial_batchnorm'] == {
    'scale': (1, 1, 1, 64),
    'offset': (1, 1, 1, 64),
  }
  assert shapes[block + 'conv_0'] == {'w': (1, 1, 64, 64)}
  assert shapes[block + 'conv_2'] == {'w': (1, 1, 64, 256)}
  assert shapes[block + 'shortcut_conv'] == {'w': (1, 1, 64, 256)}
  assert shapes[block + 'shortcut_batchnorm'] == {'scale': (1, 1, 1, 256), 'offset': (1, 1, 1, 256)}
  assert shapes['projector/linear'] == {'w': (2048, 4096), 'b': (4096,)}
  assert shapes['projector/batch_norm'] == {'scale': (1, 4096), 'offset': (1, 4096)}
  assert shapes['projector/linear_1'] == {'w': (4096, 256)}
  assert shapes['predictor/linear'] == {'w': (256, 4096), 'b': (4096,)}
  assert shapes['classifier'] == {'w': (2048, 1000), 'b': (1000,)}


def test_every_batchnorm_has_mean_and_var_ema_state(resnet50_byol):
  params, state = resnet50_byol
  batchnorms = [m for m in params if 'scale' in params[m]]
  assert len(batchnorms) == 53 + 2  # 53 in the torso, one per MLP.
  expected = {}
  for module in batchnorms:
    channels = params[module]['scale'].shape
    for ema in ('mean_ema', 'var_ema'):
      expected[f'{module}/~/{ema}'] = {'average': channels, 'hidden': channels, 'counter': ()}
  assert _shapes(state) == expected


def _torso_parameter_count(blocks_per_group, channels_per_group, bottleneck, width_multiplier=1):
  """Closed-form parameter count of a v1 torso (projection in every group)."""
  stem_channels = 64 * width_multiplier
  count = 7 * 7 * 3 * stem_channels + 2 * stem_channels
  in_channels = stem_channels
  for num_blocks, channels in zip(blocks_per_group, channels_per_group):
    channels *= width_multiplier
    for block in range(num_blocks):
      block_inputs = in_channels if block == 0 else channels
      if bottleneck:
        inner = channels // 4
        count += (
          block_inputs * inner
          + 9 * inner * inner
          + inner * channels
          + 2 * (inner + inner + channels)
        )
      else:
        count += 9 * block_inputs * channels + 9 * channels * channels + 2 * (channels + channels)
      if block == 0:
        count += block_inputs * channels + 2 * channels
    in_channels = channels
  return count


def _parameter_count(encoder_class, width_multiplier=1):
  model = hk.transform_with_state(
    lambda x: encoder_class(width_multiplier=width_multiplier)(x, True)
  )
  params, _ = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def test_resnet50_torso_parameter_count_matches_published_figure():
  # Published ResNet-50: 25,557,032 parameters with a 2048 x 1000 fc layer.
  published_torso = 25_557_032 - (2048 * 1000 + 1000)
  formula = _torso_parameter_count((3, 4, 6, 3), (256, 512, 1024, 2048), True)
  assert formula == published_torso == 23_508_032
  assert _parameter_count(networks.ResNet50) == formula


def test_resnet18_torso_parameter_count_matches_published_figure():
  # Published ResNet-18: 11,689,512 with a 512 x 1000 fc layer and no
  # projection shortcut in group 0; BYOL's has one (1x1 conv 64->64 + BN).
  published_torso = 11_689_512 - (512 * 1000 + 1000) + (64 * 64 + 2 * 64)
  formula = _torso_parameter_count((2, 2, 2, 2), (64, 128, 256, 512), False)
  assert formula == published_torso == 11_180_736
  assert _parameter_count(networks.ResNet18) == formula


def test_resnet50x2_parameter_count_matches_formula():
  formula = _torso_parameter_count((3, 4, 6, 3), (256, 512, 1024, 2048), True, width_multiplier=2)
  assert _parameter_count(networks.ResNet50, width_multiplier=2) == formula


def test_width_multiplier_2_doubles_channels():
  model = hk.transform_with_state(
    lambda x: networks.ResNet50(width_multiplier=2)(x, is_training=True)
  )
  images = jnp.zeros((2, 32, 32, 3))
  params, state = jax.eval_shape(model.init, jax.random.key(0), images)
  embedding, _ = jax.eval_shape(model.apply, params, state, None, images)
  assert embedding.shape == (2, 4096)
  assert params['res_net50/~/initial_conv']['w'].shape == (7, 7, 3, 128)
  block = 'res_net50/~/block_group_0/~/block_0/~/'
  assert params[block + 'conv_0']['w'].shape == (1, 1, 128, 128)
  assert params[block + 'conv_2']['w'].shape == (1, 1, 128, 512)


def _tiny_torso(bottleneck, resnet_v2):
  """A small ResNetTorso with two blocks in the first group."""
  return hk.transform_with_state(
    lambda x: networks.ResNetTorso(
      blocks_per_group=(2, 1, 1, 1),
      bn_config=BN_CONFIG,
      resnet_v2=resnet_v2,
      bottleneck=bottleneck,
      channels_per_group=(8, 8, 12, 16),
    )(x, is_training=True)
  )


def test_v2_torso_has_final_batchnorm_and_no_v1_batchnorms():
  params, _ = jax.eval_shape(
    _tiny_torso(bottleneck=True, resnet_v2=True).init, jax.random.key(0), jnp.zeros((2, 16, 16, 3))
  )
  assert 'res_net_torso/~/final_batchnorm' in params
  assert 'res_net_torso/~/initial_batchnorm' not in params
  assert not [m for m in params if 'shortcut_batchnorm' in m]
  assert len([m for m in params if 'shortcut_conv' in m]) == 4


@pytest.mark.parametrize('resnet_v2', [False, True])
@pytest.mark.parametrize('bottleneck', [False, True])
def test_torso_outputs_embedding_of_last_group_channels(bottleneck, resnet_v2):
  model = _tiny_torso(bottleneck, resnet_v2)
  images = jnp.zeros((3, 16, 16, 3))
  params, state = jax.eval_shape(model.init, jax.random.key(0), images)
  embedding, _ = jax.eval_shape(model.apply, params, state, None, images)
  assert embedding.shape == (3, 16)


def test_torso_with_num_classes_has_zero_initialised_logits():
  model = hk.transform_with_state(lambda x: networks.TinyResNet(num_classes=5)(x, is_training=True))
  images = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
  params, state = model.init(jax.random.key(0), images)
  logits, _ = model.apply(params, state, None, images)
  assert params['tiny_res_net/~/logits']['w'].shape == (8, 5)
  np.testing.assert_array_equal(logits, np.zeros((3, 5)))


def test_all_batchnorm_scales_initialise_to_one():
  def forward(images):
    embedding = networks.ResNetTorso(
      (1, 1, 1, 1), channels_per_group=(8, 8, 8, 8), bottleneck=True
    )(images, is_training=True)
    return networks.MLP('projector', 8, 4, BN_CONFIG)(embedding, True)

  params, _ = hk.transform_with_state(forward).init(jax.random.key(0), jnp.zeros((2, 8, 8, 3)))
  batchnorms = {m: p for m, p in params.items() if 'scale' in p}
  # Includes batchnorm_2, which Haiku's own bottleneck block zero-initialises.
  assert len(batchnorms) == 18  # 17 in the torso, 1 in the MLP.
  for module, leaves in batchnorms.items():
    np.testing.assert_array_equal(leaves['scale'], 1.0, err_msg=module)
    np.testing.assert_array_equal(leaves['offset'], 0.0, err_msg=module)


@pytest.mark.parametrize('bottleneck, last', [(True, 'batchnorm_2'), (False, 'batchnorm_1')])
def test_zero_init_residual_starts_each_blocks_last_batchnorm_at_zero_so_blocks_are_identities(
  bottleneck, last
):
  def block_groups(images, zero_init_residual):
    torso = networks.ResNetTorso(
      (2, 1, 1, 1),
      channels_per_group=(8, 8, 8, 8),
      bottleneck=bottleneck,
      zero_init_residual=zero_init_residual,
    )
    torso(images, is_training=True)
    return torso

  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 3)), jnp.float32)
  params, _ = hk.transform_with_state(lambda x: block_groups(x, zero_init_residual=True)).init(
    jax.random.key(0), images
  )
  default, _ = hk.transform_with_state(lambda x: block_groups(x, zero_init_residual=False)).init(
    jax.random.key(0), images
  )
  assert params.keys() == default.keys()
  scales = {module: leaves['scale'] for module, leaves in params.items() if 'scale' in leaves}
  zero = {module for module, scale in scales.items() if not np.any(scale)}
  # The last BatchNorm of each of the five blocks, and nothing else (shortcuts included).
  assert zero == {module for module in scales if module.endswith(f'/~/{last}')}
  assert len(zero) == 5
  assert all(np.all(scales[module] == 1) for module in scales.keys() - zero)

  # So a block without a projection starts as relu(input): block_group_0's second block.
  def second_block(x):
    block = resnet_blocks.BlockV1(8, 1, False, BN_CONFIG, bottleneck, zero_init_residual=True)
    return block(x, is_training=True)

  block = hk.transform_with_state(second_block)
  inputs = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 4, 8)), jnp.float32)
  block_params, block_state = block.init(jax.random.key(1), inputs)
  outputs, _ = block.apply(block_params, block_state, None, inputs)
  np.testing.assert_allclose(outputs, jax.nn.relu(inputs), atol=1e-6)


def test_small_image_stem_keeps_the_resolution_with_the_same_parameter_names():
  images = jnp.zeros((2, 32, 32, 3))  # [B, H, W, C], CIFAR's size

  def init(small_image_stem):
    """Parameter shapes, and the input shape of each block group."""
    group_inputs = {}

    def record(next_fun, args, kwargs, context):
      if isinstance(context.module, resnet_blocks.BlockGroup) and context.method_name == '__call__':
        group_inputs[context.module.module_name.split('/')[-1]] = args[0].shape
      return next_fun(*args, **kwargs)

    def forward(x):
      with hk.experimental.intercept_methods(record):
        return networks.ResNet18(small_image_stem=small_image_stem)(x, is_training=True)

    model = hk.transform_with_state(forward)
    params, state = jax.eval_shape(model.init, jax.random.key(0), images)
    embedding, _ = jax.eval_shape(model.apply, params, state, None, images)
    assert embedding.shape == (2, 512)
    return _shapes(params), group_inputs

  default, default_inputs = init(small_image_stem=False)
  small, small_inputs = init(small_image_stem=True)
  stem = 'res_net18/~/initial_conv'
  assert default[stem] == {'w': (7, 7, 3, 64)} and small[stem] == {'w': (3, 3, 3, 64)}
  assert {m: v for m, v in small.items() if m != stem} == {
    m: v for m, v in default.items() if m != stem
  }
  # Stride 2 and a max-pool divide the resolution by 4 before the first group; this stem keeps it.
  assert default_inputs['block_group_0'] == (2, 8, 8, 64)
  assert small_inputs == {
    'block_group_0': (2, 32, 32, 64),
    'block_group_1': (2, 32, 32, 64),
    'block_group_2': (2, 16, 16, 128),
    'block_group_3': (2, 8, 8, 256),
  }


def test_preset_default_names_are_snake_cased_class_names():
  def construct():
    return [networks.get_encoder(name)().module_name for name in ENCODER_NAMES]

  names = hk.transform(construct).apply({}, None)
  assert names == [
    'tiny_res_net',
    'res_net18',
    'res_net34',
    'res_net50',
    'res_net101',
    'res_net152',
    'res_net200',
  ]


def test_get_encoder_returns_the_named_class():
  assert networks.get_encoder('ResNet50') is networks.ResNet50
  assert networks.get_encoder('TinyResNet') is networks.TinyResNet


def test_get_encoder_lists_valid_names_for_unknown_name():
  with pytest.raises(ValueError, match='ResNet51') as error:
    networks.get_encoder('ResNet51')
  for name in ENCODER_NAMES:
    assert name in str(error.value)


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({'blocks_per_group': (1, 1, 1)}, 'blocks_per_group.*4 entries'),
    ({'channels_per_group': (8,) * 5}, 'channels_per_group.*4 entries'),
    ({'use_projection': (True,) * 3}, 'use_projection.*4 entries'),
    ({'blocks_per_group': (1, 0, 1, 1)}, 'blocks_per_group.*positive'),
    ({'channels_per_group': (8, 8, 8, 10)}, 'multiples of 4'),
    ({'width_multiplier': 0}, 'width_multiplier.*positive int'),
    ({'width_multiplier': 1.5}, 'width_multiplier.*positive int'),
    ({'num_classes': 0}, 'num_classes'),
    ({'zero_init_residual': True, 'resnet_v2': True}, 'zero_init_residual.*v1 blocks'),
  ],
)
def test_bad_torso_arguments_raise_value_error(kwargs, message):
  config = {'blocks_per_group': (1, 1, 1, 1), 'channels_per_group': (8,) * 4, **kwargs}
  model = hk.transform_with_state(lambda x: networks.ResNetTorso(**config)(x, is_training=True))
  with pytest.raises(ValueError, match=message):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


def test_every_convolution_is_built_by_conv2d(monkeypatch):
  built = []

  def recording_conv(*args, **kwargs):
    conv = build_conv(*args, **kwargs)
    built.append(conv.module_name)
    return conv

  build_conv = resnet_blocks.conv2d
  monkeypatch.setattr(resnet_blocks, 'conv2d', recording_conv)
  for resnet_v2 in (False, True):
    params, _ = jax.eval_shape(
      _tiny_torso(bottleneck=True, resnet_v2=resnet_v2).init,
      jax.random.key(0),
      jnp.zeros((1, 16, 16, 3)),
    )
    convs = [m for m, leaves in params.items() if 'w' in leaves and leaves['w'].ndim == 4]
    assert sorted(built) == sorted(convs)
    built.clear()


def _numpy_conv_same(x, w, stride):
  """SAME-padded convolution, x [B, H, W, Cin], w [k, k, Cin, Cout]."""
  kernel = w.shape[0]
  _, height, width, _ = x.shape
  out_h, out_w = -(-height // stride), -(-width // stride)
  pad_h = max((out_h - 1) * stride + kernel - height, 0)
  pad_w = max((out_w - 1) * stride + kernel - width, 0)
  # TensorFlow/XLA SAME puts the odd padding pixel at the end.
  x = np.pad(
    x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
  )
  out = np.zeros(x.shape[:1] + (out_h, out_w, w.shape[-1]))
  for i in range(kernel):
    for j in range(kernel):
      window = x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride]
      out += window @ w[i, j]
  return out


def _numpy_batchnorm(x, params):
  """Training-mode BatchNorm: statistics over batch and space."""
  mean = x.mean(axis=(0, 1, 2))
  variance = x.var(axis=(0, 1, 2))
  return (x - mean) / np.sqrt(variance + BN_CONFIG['eps']) * params['scale'] + params['offset']


def _random_block_run(block_class):
  """Runs a basic block (4 channels, stride 2, projection) with random params.

  Returns (numpy params by local module name, input, output), all float64.
  """
  model = hk.transform_with_state(
    lambda x: block_class(
      channels=4, stride=2, use_projection=True, bn_config=BN_CONFIG, bottleneck=False, name='block'
    )(x, is_training=True)
  )
  images = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  params, state = model.init(jax.random.key(1), images)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  # Random scales around 1 and random offsets/weights exercise every term.
  leaves = [leaf + 0.5 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)]
  params = jax.tree.unflatten(treedef, leaves)
  out, _ = model.apply(params, state, None, images)
  local = {
    m.removeprefix('block/~/'): jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    for m, p in params.items()
  }
  return local, np.asarray(images, np.float64), np.asarray(out)


def test_block_v1_matches_numpy_in_training_mode():
  p, x, out = _random_block_run(resnet_blocks.BlockV1)

  def relu(v):
    return np.maximum(v, 0.0)

  shortcut = _numpy_batchnorm(
    _numpy_conv_same(x, p['shortcut_conv']['w'], 2), p['shortcut_batchnorm']
  )
  h = relu(_numpy_batchnorm(_numpy_conv_same(x, p['conv_0']['w'], 2), p['batchnorm_0']))
  h = _numpy_batchnorm(_numpy_conv_same(h, p['conv_1']['w'], 1), p['batchnorm_1'])
  expected = relu(h + shortcut)
  assert out.shape == (2, 3, 3, 4)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_block_v2_matches_numpy_in_training_mode():
  p, x, out = _random_block_run(resnet_blocks.BlockV2)

  def relu(v):
    return np.maximum(v, 0.0)

  h = relu(_numpy_batchnorm(x, p['batchnorm_0']))
  shortcut = _numpy_conv_same(h, p['shortcut_conv']['w'], 2)
  h = _numpy_conv_same(h, p['conv_0']['w'], 2)
  h = relu(_numpy_batchnorm(h, p['batchnorm_1']))
  expected = _numpy_conv_same(h, p['conv_1']['w'], 1) + shortcut
  assert out.shape == (2, 3, 3, 4)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------- CPU-only routes (cpu_kernels)


@pytest.mark.parametrize(
  'input_size, kernel, stride', [(2, 3, 1), (2, 3, 2), (2, 7, 2), (4, 3, 2), (5, 3, 1), (3, 1, 1)]
)
def test_patch_product_equals_the_convolution_in_values_and_gradients(input_size, kernel, stride):
  rng = np.random.default_rng(input_size * 100 + kernel * 10 + stride)
  inputs = jnp.asarray(rng.normal(size=(3, input_size, input_size, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 8, 5)), jnp.float32)

  def plain(inputs, w):
    return jax.lax.conv_general_dilated(
      inputs, w, (stride, stride), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )

  def routed(inputs, w):
    return cpu_kernels.conv_as_patch_product(inputs, w, (stride, stride), 'SAME')

  expected, plain_vjp = jax.vjp(plain, inputs, w)
  actual, routed_vjp = jax.vjp(routed, inputs, w)
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
  cotangent = jnp.asarray(rng.normal(size=expected.shape), jnp.float32)
  for name, got, want in zip(('inputs', 'w'), routed_vjp(cotangent), plain_vjp(cotangent)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize('input_size', [2, 4])
def test_patch_product_conv_has_the_parameter_and_output_of_haiku_conv(input_size):
  """On 2x2 maps PatchProductConv2D takes the patch route; its parameter is hk.Conv2D's."""

  def apply(conv_class):
    def forward(inputs):
      return conv_class(
        output_channels=16, kernel_shape=3, stride=1, with_bias=False, padding='SAME', name='conv_1'
      )(inputs)

    net = hk.transform(forward)
    inputs = jnp.asarray(
      np.random.default_rng(0).normal(size=(2, input_size, input_size, 32)), jnp.float32
    )
    params = net.init(jax.random.key(3), inputs)
    return params, net.apply(params, None, inputs), jax.make_jaxpr(net.apply)(params, None, inputs)

  params, outputs, jaxpr = apply(cpu_kernels.PatchProductConv2D)
  haiku_params, haiku_outputs, _ = apply(hk.Conv2D)
  jax.tree.map(np.testing.assert_array_equal, params, haiku_params)
  assert list(params) == ['conv_1'] and list(params['conv_1']) == ['w']
  np.testing.assert_allclose(outputs, haiku_outputs, rtol=1e-5, atol=1e-5)
  # The route (a matrix product) is taken exactly where it helps: on 2x2 maps.
  assert ('dot_general' in str(jaxpr)) == (input_size == 2)


def _tiny_byol_forward(compute_dtype):
  """A TinyResNet and a projector under `mixed_precision`, inputs cast in, outputs cast out."""

  def forward(images):
    with precision.mixed_precision(compute_dtype):
      embedding = networks.TinyResNet(bn_config=BN_CONFIG)(
        images.astype(compute_dtype), is_training=True
      )
      projection = networks.MLP('projector', 16, 8, BN_CONFIG)(embedding, True)
    return projection.astype(jnp.float32), embedding

  return hk.transform_with_state(forward)


def test_bfloat16_computes_in_bfloat16_with_the_float32_parameters_and_statistics():
  images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 16, 3)), jnp.float32)
  results = {}
  for dtype in ('float32', 'bfloat16'):
    net = _tiny_byol_forward(dtype)
    params, state = jax.jit(net.init)(jax.random.key(0), images)
    (projection, embedding), new_state = jax.jit(net.apply)(params, state, None, images)
    results[dtype] = params, new_state, projection
    assert embedding.dtype == dtype
    # Every convolution reads its input and weight in the compute dtype.
    equations = jax.make_jaxpr(net.apply)(params, state, None, images).jaxpr.eqns
    convolutions = [e for e in equations if e.primitive.name == 'conv_general_dilated']
    assert convolutions and all(
      operand.aval.dtype == dtype for e in convolutions for operand in e.invars
    )
  params, new_state, projection = results['bfloat16']
  # The same float32 parameters from the same key (to float32 rounding: two programs draw them;
  # parameters drawn in bfloat16 would differ by ~0.4%); BatchNorm averages in float32.
  jax.tree.map(
    functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7),
    params,
    results['float32'][0],
  )
  assert {leaf.dtype for leaf in jax.tree.leaves((params, new_state))} <= {
    jnp.dtype('float32'),
    jnp.dtype('int32'),
  }

  # bfloat16 keeps 8 bits of mantissa (~0.4% per rounding); the error grows with depth, and
  # BatchNorm over 4 examples on 1x1 maps amplifies it: measured 8% at the projection.
  def relative_error(value, reference):
    return np.linalg.norm(value - reference) / np.linalg.norm(reference)

  assert 0 < relative_error(projection, results['float32'][2]) < 0.15
  errors = {
    module: relative_error(new_state[module]['average'], results['float32'][1][module]['average'])
    for module in new_state
  }
  assert errors['tiny_res_net/~/initial_batchnorm/~/var_ema'] < 0.005
  assert max(errors.values()) < 0.1


def test_unknown_compute_dtype_is_refused():
  with pytest.raises(ValueError, match="Unknown compute dtype 'float16'"):
    with precision.mixed_precision('float16'):
      pass


@pytest.mark.parametrize(
  'shape, levels',
  [
    ((3, 9, 9, 4), None),  # Odd sides: SAME pads one after.
    ((2, 8, 10, 3), None),
    ((3, 8, 8, 4), 2),  # Values on a coarse grid: many ties inside windows.
    ((2, 7, 6, 2), 1),
  ],
)
def test_max_pool_equals_haiku_in_values_and_gradients(shape, levels):
  rng = np.random.default_rng(0)
  inputs = rng.normal(size=shape).astype(np.float32)
  if levels:
    inputs = np.maximum(np.round(inputs * levels) / levels, 0.0)  # ReLU-like zeros too.

  def haiku_pool(x):
    return hk.max_pool(x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding='SAME')

  outputs, vjp = jax.vjp(lambda x: cpu_kernels.max_pool(x, window=3, stride=2), inputs)
  haiku_outputs, haiku_vjp = jax.vjp(haiku_pool, inputs)
  np.testing.assert_array_equal(outputs, haiku_outputs)
  grads = rng.normal(size=outputs.shape).astype(np.float32)
  # On ties, both give the gradient to the first maximum of the window (row-major).
  np.testing.assert_allclose(vjp(grads)[0], haiku_vjp(grads)[0], rtol=0, atol=1e-6)
  # The gradient avoids XLA's select-and-scatter (its slow path on CPU).
  gradient = jax.make_jaxpr(jax.grad(lambda x: jnp.sum(cpu_kernels.max_pool(x, 3, 2))))(inputs)
  assert 'select_and_scatter' not in str(gradient)
  assert 'select_and_scatter' in str(
    jax.make_jaxpr(jax.grad(lambda x: jnp.sum(haiku_pool(x))))(inputs)
  )


def _tiny_resnet_gradient(use_cpu_kernels):
  """Params, embedding, input gradient and gradient jaxpr of a TinyResNet on 32x32 images.

  At 32 px the stem leaves 8x8 maps and block groups 2 and 3 convolve 2x2 maps.
  """
  net = hk.transform_with_state(
    lambda x: networks.TinyResNet(bn_config=BN_CONFIG, use_cpu_kernels=use_cpu_kernels)(
      x, is_training=True
    )
  )
  images = jnp.asarray(np.random.default_rng(5).normal(size=(4, 32, 32, 3)), jnp.float32)
  params, state = jax.jit(net.init)(jax.random.key(6), images)

  def loss(params, images):
    embedding, _ = net.apply(params, state, None, images)
    return jnp.sum(jnp.square(embedding)), embedding

  gradient = jax.grad(loss, argnums=(0, 1), has_aux=True)
  grads, embedding = jax.jit(gradient)(params, images)
  return params, embedding, grads, str(jax.make_jaxpr(gradient)(params, images))


def test_cpu_kernels_switch_chooses_the_route_with_the_same_parameters_and_numbers():
  """Switched off, the ResNets use Haiku's convolution and max pool; the numbers stay the same."""
  params_on, embedding_on, grads_on, jaxpr_on = _tiny_resnet_gradient(use_cpu_kernels=True)
  params_off, embedding_off, grads_off, jaxpr_off = _tiny_resnet_gradient(use_cpu_kernels=False)
  # The same parameter names, shapes and initial values (SPEC 3), whichever the route: the same
  # keys and distributions, drawn in two different programs (whose element-wise code may round
  # the truncated normal's inverse error function differently in the last bit).
  jax.tree.map(
    lambda on, off: np.testing.assert_allclose(on, off, rtol=1e-6, atol=1e-7), params_on, params_off
  )
  # On: 2x2 maps as a matrix product, the max-pool gradient without select-and-scatter.
  assert 'dot_general' in jaxpr_on and 'select_and_scatter' not in jaxpr_on
  # Off: no matrix product at all (no logits layer), and XLA's own max-pool gradient.
  assert 'dot_general' not in jaxpr_off and 'select_and_scatter' in jaxpr_off
  np.testing.assert_allclose(embedding_on, embedding_off, rtol=1e-5, atol=1e-5)
  # Gradients of magnitude up to ~50 differ by up to 7e-5 (measured): float32 rounding.
  for got, want in zip(jax.tree.leaves(grads_on), jax.tree.leaves(grads_off)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------- equality with Haiku's ResNet

# `hk.nets.ResNet` strides its four groups (1, 2, 2, 2) (its `strides` default).
_HAIKU_RESNET_STRIDES = (1, 2, 2, 2)


def _first_two_groups(block_group_class, blocks, channels, strides, bn_config, **kwargs):
  """Block groups 0 and 1 of a v1 bottleneck ResNet; returns both groups' outputs."""

  def forward(images, is_training):
    outputs = [images]
    for i in range(2):
      group = block_group_class(
        channels=channels[i],
        num_blocks=blocks[i],
        stride=strides[i],
        bn_config=bn_config,
        resnet_v2=False,
        bottleneck=True,
        use_projection=True,
        name=f'block_group_{i}',
        **kwargs,
      )
      outputs.append(group(outputs[-1], is_training, False))
    return outputs[1:]

  return hk.transform_with_state(forward)


def _leaves(tree):
  """{(module, leaf name): value} of a Haiku params/state dict."""
  return {
    (module, name): value for module, leaves in tree.items() for name, value in leaves.items()
  }


def _renamed(tree, mapping):
  """`tree` with each (module, leaf) moved to `mapping[(module, leaf)]`."""
  renamed = {}
  for key, value in _leaves(tree).items():
    module, name = mapping[key]
    renamed.setdefault(module, {})[name] = value
  return renamed


@pytest.mark.parametrize(
  'size, use_cpu_kernels, atol',
  [
    # Plain convolutions throughout (group 1 ends on 4x4 maps): measured bit-equal.
    (8, True, 1e-5),
    # Group 1 ends on 2x2 maps, where our 3x3 convolutions take the CPU patch product, which
    # rounds unlike XLA's convolution; three blocks on, with BatchNorm statistics over only 8
    # values per channel, outputs of magnitude ~10 differ by up to 1.1e-5 (measured over seeds),
    # still float32 rounding (~1e-6 relative) but up to 0.8 of a 1e-5 atol.
    (4, True, 5e-5),
    # The same maps with the routes switched off: XLA's convolution, as Haiku computes it.
    (4, False, 1e-5),
  ],
)
def test_resnet50_bottleneck_groups_equal_haiku_block_group_numerically(
  size, use_cpu_kernels, atol
):
  """Groups 0 (3 x 256, stride 1) and 1 (4 x 512, stride 2) of our ResNet-50 compute what
  `hk.nets.ResNet.BlockGroup` (the original's network) does with the same parameters."""
  # Each side is built as its ResNet-50 builds it, once the two presets are seen to agree.
  haiku_config = hk.nets.ResNet.CONFIGS[50]
  blocks, channels = networks.ResNet50.blocks_per_group, networks.ResNet50.channels_per_group
  assert blocks == haiku_config['blocks_per_group'] and haiku_config['bottleneck']
  assert channels == haiku_config['channels_per_group'] and all(haiku_config['use_projection'])
  assert networks._GROUP_STRIDES == _HAIKU_RESNET_STRIDES
  ours = _first_two_groups(
    resnet_blocks.BlockGroup,
    blocks,
    channels,
    networks._GROUP_STRIDES,
    networks._with_bn_defaults(BN_CONFIG),
    use_cpu_kernels=use_cpu_kernels,
  )
  # The original BYOL passed its bn_config (decay 0.9, eps 1e-5, scale, offset) in full, which
  # also overrides BlockV1's own default decay of 0.999.
  theirs = _first_two_groups(
    hk.nets.ResNet.BlockGroup, blocks, channels, _HAIKU_RESNET_STRIDES, BN_CONFIG
  )
  rng = np.random.default_rng(size)
  images = jnp.asarray(rng.normal(size=(2, size, size, 64)), jnp.float32)
  # Shapes only: running the initialisers would take most of the test's time.
  params, state = jax.eval_shape(lambda x: ours.init(jax.random.key(0), x, True), images)
  haiku_params, haiku_state = jax.eval_shape(
    lambda x: theirs.init(jax.random.key(0), x, True), images
  )

  # Our names are Haiku's (SPEC 3: the released checkpoints are keyed by them), so the mapping
  # is the identity on (module, leaf). Checked, not assumed: one-to-one onto Haiku's names with
  # equal shapes, covering every parameter and every BatchNorm moving-average entry.
  mappings = []
  for tree, haiku_tree, count in (
    (params, haiku_params, 23 + 23 * 2),  # 23 kernels; 23 BatchNorms' scale and offset.
    (state, haiku_state, 23 * 2 * 3),
  ):  # mean_ema, var_ema: average, hidden, counter.
    leaves, haiku_leaves = _leaves(tree), _leaves(haiku_tree)
    mapping = {key: key for key in leaves}
    assert len(mapping) == len(set(mapping.values())) == len(haiku_leaves) == count
    assert set(mapping.values()) == set(haiku_leaves)
    for key, haiku_key in mapping.items():
      assert leaves[key].shape == haiku_leaves[haiku_key].shape, key
    mappings.append(mapping)
  param_mapping, state_mapping = mappings

  # Random values for every entry, so that each one counts: kernels at the scale of Haiku's
  # initialiser, scales around 1, offsets around 0, moving averages away from their initial
  # zeros (positive for variances) and EMA counters past 0. Neither side's initial values are
  # used, so Haiku's zero-initialised batchnorm_2 scale (ours starts at 1, README "Differences
  # from the original") is an intended difference that does not enter here.
  def draw(module, name, leaf):
    noise = rng.normal(size=leaf.shape)
    if name == 'w':
      value = noise / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name == 'counter':
      value = 5
    elif name == 'scale':
      value = 1 + 0.3 * noise
    elif module.endswith('var_ema'):
      value = np.exp(0.3 * noise)
    else:
      value = 0.3 * noise
    return jnp.asarray(value, leaf.dtype)

  params, state = (
    {m: {n: draw(m, n, v) for n, v in leaves.items()} for m, leaves in tree.items()}
    for tree in (params, state)
  )
  for is_training in (True, False):
    outputs, new_state = ours.apply(params, state, None, images, is_training)
    haiku_outputs, haiku_new_state = theirs.apply(
      _renamed(params, param_mapping), _renamed(state, state_mapping), None, images, is_training
    )
    assert [o.shape for o in outputs] == [(2, size, size, 256), (2, size // 2, size // 2, 512)]
    for output, haiku_output in zip(outputs, haiku_outputs):
      np.testing.assert_allclose(output, haiku_output, rtol=1e-5, atol=atol)
    haiku_new_state = _leaves(haiku_new_state)
    # Training mode moved every average (each counter went 5 -> 6); inference left them.
    assert {int(v) for (_, n), v in _leaves(new_state).items() if n == 'counter'} == {
      6 if is_training else 5
    }
    for key, value in _leaves(new_state).items():
      np.testing.assert_allclose(
        value, haiku_new_state[state_mapping[key]], rtol=1e-5, atol=1e-5, err_msg=str(key)
      )
  # The 2x2 maps of group 1 took the patch-product route (a matrix product) where switched on.
  jaxpr = str(jax.make_jaxpr(ours.apply, static_argnums=4)(params, state, None, images, True))
  assert ('dot_general' in jaxpr) == (size == 4 and use_cpu_kernels)
