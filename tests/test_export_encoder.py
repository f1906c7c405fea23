"""Export of a trained encoder to .npz, and its use outside the experiment classes."""

import os
import pickle
import subprocess
import sys

import haiku as hk
import jax
import numpy as np
import pytest

from byol import export_encoder
from byol.configs import byol as byol_config
from byol.utils import checkpointing
from byol.utils import input_spec
from byol.utils import helpers
from byol.utils import networks
import support  # This folder is on the path.


def test_export_of_a_pretraining_checkpoint_round_trips_the_online_encoder(tmp_path):
  checkpoint, pretrain_state = support.write_pretrain_checkpoint(tmp_path)
  output = str(tmp_path / 'encoder.npz')
  assert export_encoder.export_encoder(checkpoint, output) == 'tiny_res_net width 1'

  params, state = export_encoder.load_encoder(output)
  encoder_modules = {m for m in pretrain_state.online_params if m.startswith('tiny_res_net/')}
  assert set(params) == encoder_modules
  jax.tree.map(
    np.testing.assert_array_equal,
    params,
    {m: pretrain_state.online_params[m] for m in encoder_modules},
  )
  jax.tree.map(
    np.testing.assert_array_equal, state, {m: pretrain_state.online_state[m] for m in state}
  )
  assert len(state) == len(
    [m for m in pretrain_state.online_state if m.startswith('tiny_res_net/')]
  )


def exported_embedding(path, images):
  """The embedding of `images` by the TinyResNet exported to `path`, built as the README says."""
  params, state = export_encoder.load_encoder(path)
  bn_config = byol_config.get_config(100, 8)['network_config']['bn_config']
  encoder = hk.without_apply_rng(
    hk.transform_with_state(
      lambda x: networks.TinyResNet(bn_config=bn_config)(x, is_training=False)
    )
  )
  return encoder.apply(params, state, images)[0]


def test_exported_encoder_gives_the_embedding_of_the_linear_evaluation_backbone(tmp_path):
  checkpoint, _ = support.write_pretrain_checkpoint(tmp_path)
  experiment = support.linear_eval_experiment(tmp_path, checkpoint)
  experiment.initialize(jax.random.key(0))
  experiment.save_checkpoint(global_step=0, rng=jax.random.key(1))
  output = str(tmp_path / 'encoder.npz')
  export_encoder.export_encoder(experiment.checkpoint_path, output)

  # The README's recipe: the same encoder class, inference mode, normalised images.
  images = (
    np.random.default_rng(0)
    .uniform(size=(3, support.IMAGE_SIZE, support.IMAGE_SIZE, 3))
    .astype(np.float32)
  )
  embedding = exported_embedding(output, input_spec.normalize_images(images))

  run_state = helpers.to_host(experiment.state)
  expected, _ = experiment._backbone.apply(
    run_state.backbone_params, run_state.backbone_state, images, is_training=False
  )
  np.testing.assert_allclose(embedding, expected, rtol=1e-6, atol=1e-6)
  jax.tree.map(
    np.testing.assert_array_equal, export_encoder.load_classifier(output), run_state.classif_params
  )


@pytest.mark.parametrize(
  'contents, message',
  [
    (lambda marker: b'not a pickle at all', 'truncated or not a checkpoint'),
    (
      lambda marker: pickle.dumps({'experiment_state': support.RunsACommand(f'touch {marker}')}),
      'Refusing to load',
    ),
  ],
)
def test_command_line_reports_a_bad_checkpoint_and_writes_nothing(
  tmp_path, monkeypatch, contents, message
):
  marker = tmp_path / 'pwned'
  bad = tmp_path / 'pretrain.pkl'
  bad.write_bytes(contents(marker))
  # The message alone, as the process's exit status (printed without a traceback).
  with pytest.raises(SystemExit) as exit_info:
    support.run_program(
      export_encoder, monkeypatch, f'--checkpoint={bad}', f'--output={tmp_path / "encoder.npz"}'
    )
  assert isinstance(exit_info.value.code, str)
  assert exit_info.value.code.startswith('error: ') and message in exit_info.value.code
  assert os.listdir(tmp_path) == ['pretrain.pkl']


def test_a_2020_release_file_exports_the_encoder_of_our_file_with_the_same_embedding(tmp_path):
  checkpoint, pretrain_state = support.write_pretrain_checkpoint(tmp_path)
  release_file = support.write_2020_release_file(tmp_path / 'pretrain_res50x1.pkl', pretrain_state)
  embeddings = []
  for source in (checkpoint, release_file):
    output = f'{source}.npz'
    assert export_encoder.export_encoder(source, output) == 'tiny_res_net width 1'
    images = np.random.default_rng(0).uniform(size=(2, support.IMAGE_SIZE, support.IMAGE_SIZE, 3))
    embeddings.append(exported_embedding(output, images.astype(np.float32)))
  np.testing.assert_array_equal(embeddings[0], embeddings[1])
  assert np.std(embeddings[0]) > 0


def test_command_line_exports(tmp_path):
  checkpoint, _ = support.write_pretrain_checkpoint(tmp_path)
  output = tmp_path / 'encoder.npz'
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'byol.export_encoder',
      f'--checkpoint={checkpoint}',
      f'--output={output}',
    ],
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert result.returncode == 0, result.stderr
  assert 'Wrote tiny_res_net width 1 to' in result.stdout
  assert checkpointing.describe_networks(export_encoder.load_encoder(str(output))[0]) == (
    'tiny_res_net width 1'
  )
