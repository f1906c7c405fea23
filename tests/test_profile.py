"""The per-operation profile: each convolution's role and FLOPs read from XLA's program text, and
each operation's time read from a real trace."""

import jax
import jax.numpy as jnp
import numpy as np

from byol import profile

BATCH, SIDE, IN, OUT, KERNEL = 4, 8, 5, 6, 3


def conv(x, w):
  return jax.lax.conv_general_dilated(
    x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


def loss(x, w1, w2, v):
  """Two convolution layers and a product, all differentiated (x too: both input gradients)."""
  hidden = jax.nn.relu(conv(jax.nn.relu(conv(x, w1)), w2))  # [B, S, S, OUT]
  return jnp.sum(hidden.reshape(BATCH, -1) @ v)


def normal(seed, *shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


arguments = (
  normal(0, BATCH, SIDE, SIDE, IN),
  normal(1, KERNEL, KERNEL, IN, OUT),
  normal(2, KERNEL, KERNEL, OUT, OUT),
  normal(3, SIDE * SIDE * OUT, 2),
)
gradient = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))


def test_convolutions_have_their_role_and_the_flops_of_the_formula():
  found = profile.operations(
    gradient.lower(*arguments).compile().as_text(), [arguments[1].shape, arguments[2].shape]
  )
  convolutions = {}
  for op in found.values():
    role = op.kind.removeprefix('fusion (').removesuffix(')')
    if role.startswith('conv'):
      convolutions.setdefault(role, []).append(op.flops)
  # Each pass of a layer computes BATCH * SIDE^2 * KERNEL^2 * (its input channels) * OUT
  # multiply-adds: forward, input gradient and weight gradient alike.
  layers = sorted(2.0 * BATCH * SIDE**2 * KERNEL**2 * channels * OUT for channels in (IN, OUT))
  assert sorted(convolutions['conv forward']) == layers
  assert sorted(convolutions['conv weight gradient']) == layers
  assert sorted(convolutions['conv input gradient']) == layers
  dots = [op.flops for op in found.values() if op.kind in ('dot', 'fusion (dot)')]
  assert 2.0 * BATCH * SIDE**2 * OUT * 2 in dots


def test_a_real_trace_gives_every_timed_operation_a_positive_time(tmp_path):
  compiled = gradient.lower(*arguments).compile()
  found = profile.operations(compiled.as_text(), [arguments[1].shape, arguments[2].shape])
  jax.block_until_ready(compiled(*arguments))
  with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
    jax.block_until_ready(compiled(*arguments))
  module = compiled.as_text().split()[1].rstrip(',')
  seconds = profile.operation_seconds(profile._events(str(tmp_path)), module)
  assert seconds and set(seconds) <= set(found)
  assert all(0 < s < 10 for s in seconds.values())
  timed_kinds = {found[name].kind.removeprefix('fusion (').removesuffix(')') for name in seconds}
  assert {'conv forward', 'conv weight gradient', 'conv input gradient'} <= timed_kinds


def test_an_operations_time_runs_from_its_start_to_its_end_event():
  def start(name, ts, dur):
    return dict(ph='X', name=name, ts=ts, dur=dur, args=dict(hlo_module='m', hlo_op=name))

  events = [
    start('conv.1', 100.0, 5.0),  # Launched at 100, finished on another thread at 130 + 2.
    dict(ph='X', name='end: conv.1', ts=130.0, dur=2.0),
    start('fusion.2', 140.0, 10.0),  # No end event: its own duration.
    start('conv.1', 200.0, 1.0),  # The second run: its own end, not the first's.
    dict(ph='X', name='end: conv.1', ts=250.0, dur=0.0),
    start('other.3', 0.0, 1.0) | dict(args=dict(hlo_module='another', hlo_op='other.3')),
  ]
  seconds = profile.operation_seconds(events, 'm')
  assert seconds.keys() == {'conv.1', 'fusion.2'}
  np.testing.assert_allclose(seconds['conv.1'], (32.0 + 50.0) / 1e6)
  np.testing.assert_allclose(seconds['fusion.2'], 10.0 / 1e6)


def test_a_strided_convolutions_three_passes_count_the_same_flops():
  def strided(x, w):
    return jnp.sum(
      jax.lax.conv_general_dilated(x, w, (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      ** 2
    )

  x, w = arguments[0], arguments[1]
  text = jax.jit(jax.grad(strided, argnums=(0, 1))).lower(x, w).compile().as_text()
  found = profile.operations(text, [w.shape])
  flops = {op.kind.removeprefix('fusion (').removesuffix(')'): op.flops for op in found.values()}
  # The input gradient convolves a gradient dilated with zeros: those products are not counted.
  expected = 2.0 * BATCH * (SIDE // 2) ** 2 * KERNEL**2 * IN * OUT
  assert flops['conv forward'] == flops['conv input gradient'] == flops['conv weight gradient']
  assert flops['conv forward'] == expected


def test_the_pretraining_update_of_a_tiny_resnet_profiles_by_role():
  timed, wall = profile.profile('TinyResNet', image_size=32, batch_size=4, steps=1)
  assert wall > 0 and all(op.seconds > 0 for op in timed)
  assert [op.seconds for op in timed] == sorted((op.seconds for op in timed), reverse=True)
  kinds = {kind for kind, _, _ in profile.by_kind(timed)}
  assert {'conv forward', 'conv input gradient', 'conv weight gradient', 'dot'} <= kinds
