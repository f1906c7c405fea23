"""The one path that builds a config: length preset, then the dataset's recipe, then overrides."""

import pytest

from byol.configs import byol as byol_config
from byol.configs import datasets
from byol.configs import eval as eval_config

# Imagenette's training split as TFDS prepares it (imagenette/160px-v2: 9,469 images, 10 classes).
IMAGENETTE = datasets.Dataset('imagenette', num_classes=10, train_images=9469, image_size=128)


def test_imagenet_1000_epochs_is_the_papers_recipe():
  config = byol_config.get_config(1000, 4096)
  # Warm-up of 10 epochs and the run's length, from ImageNet's 1,281,167 training images.
  assert config['max_steps'] == 1000 * 1_281_167 // 4096 == 312_784
  assert config['lr_schedule_config'] == dict(base_learning_rate=0.2, warmup_steps=3127)
  assert config['base_target_ema'] == 0.996
  assert config['optimizer_config']['weight_decay'] == 1.5e-6
  assert config['network_config']['encoder_class'] == 'ResNet50'
  assert config['num_classes'] == 1000
  assert config['dataset_config']['image_size'] == 224
  assert config['evaluation_config']['batch_size'] == 100


def test_a_datasets_recipe_replaces_only_its_own_entries_of_the_length_preset():
  config = byol_config.get_config(300, dataset=IMAGENETTE)
  # SPEC 7's small-scale setup: ResNet-18 on 128 px, batch 256, base LR 2.0, weight decay 1e-6,
  # evaluation batch 25 ...
  assert config['batch_size'] == 256
  assert config['network_config']['encoder_class'] == 'ResNet18'
  assert config['dataset_config']['image_size'] == 128
  assert config['lr_schedule_config']['base_learning_rate'] == 2.0
  assert config['optimizer_config']['weight_decay'] == 1e-6
  assert config['evaluation_config']['batch_size'] == 25
  # ... while the 300-epoch preset keeps its target EMA, and the dataset sizes the run.
  assert config['base_target_ema'] == 0.99
  assert config['num_classes'] == 10
  assert config['max_steps'] == 300 * 9469 // 256
  assert config['lr_schedule_config']['warmup_steps'] == int(10 * 9469 / 256)
  assert config['dataset_config']['name'] == 'imagenette'


def test_linear_evaluation_takes_the_datasets_encoder_and_batches_but_not_its_pretraining_rates():
  config = eval_config.get_config('/r/pretrain.pkl', dataset=IMAGENETTE)
  assert config['network_config']['encoder_class'] == 'ResNet18'
  assert config['batch_size'] == 256 and config['evaluation_config']['batch_size'] == 25
  assert config['lr_schedule_config'] == dict(base_learning_rate=0.2, warmup_steps=0)
  assert config['max_steps'] == 80 * 9469 // 256
  assert config['checkpoint_to_evaluate'] == '/r/pretrain.pkl'


def test_fine_tuning_is_the_semi_supervised_preset_on_the_labelled_share():
  config = eval_config.get_config('/r/pretrain.pkl', fine_tune=True, label_fraction=0.1)
  # ImageNet: batch 1024, 30 epochs of a tenth of its 1,281,167 images, base rate 0.02.
  assert config['batch_size'] == 1024 and config['freeze_backbone'] is False
  assert config['max_steps'] == 30 * 128_117 // 1024
  assert config['lr_schedule_config'] == dict(base_learning_rate=0.02, warmup_steps=0)
  assert config['dataset_config']['label_fraction'] == 0.1
  assert config['checkpointing_config']['filename'] == 'fine-tune.pkl'
  # A dataset's recipe keeps its own batch size.
  assert eval_config.get_config(None, fine_tune=True, dataset=IMAGENETTE)['batch_size'] == 256


def test_max_steps_keeps_the_share_of_the_warm_up():
  config = byol_config.get_config(1000, 4096, max_steps=1000)
  assert config['max_steps'] == 1000
  assert config['lr_schedule_config']['warmup_steps'] == int(3127 / 312_784 * 1000) == 9
  with pytest.raises(ValueError, match='max_steps must be positive'):
    byol_config.get_config(1000, 4096, max_steps=0)


def test_overrides_apply_last_and_the_checkpoint_root_is_where_checkpoints_go():
  config = byol_config.get_config(
    300,
    dataset=IMAGENETTE,
    checkpoint_root='/runs/a',
    overrides=['network_config.encoder_class=ResNet50', 'evaluation_config.batch_size=7'],
  )
  assert config['network_config']['encoder_class'] == 'ResNet50'
  assert config['evaluation_config']['batch_size'] == 7
  assert config['checkpointing_config'] == dict(
    checkpoint_dir='/runs/a', save_checkpoint_interval=300, filename='pretrain.pkl'
  )


@pytest.mark.parametrize('make_config', [byol_config.get_config, eval_config.get_config])
@pytest.mark.parametrize('size', [0, -8])
def test_a_batch_size_that_is_not_positive_is_refused(make_config, size):
  with pytest.raises(ValueError, match=f'batch_size must be positive, got {size}'):
    make_config(batch_size=size)


def test_the_synthetic_set_is_described_from_its_images_and_its_preset():
  synthetic = datasets.describe('synthetic')
  assert synthetic == datasets.Dataset('synthetic', 10, train_images=5000, image_size=32)
  config = byol_config.get_config(100, dataset=synthetic)
  # The short-run recipe of the quick start.
  assert config['batch_size'] == 64 and config['base_target_ema'] == 0.99
  network = config['network_config']
  assert network['encoder_class'] == 'TinyResNet'
  assert network['encoder_config']['width_multiplier'] == 4
  heads = [
    network[f'{head}_size'] for head in ('projector_hidden', 'projector_output', 'predictor_hidden')
  ]
  assert heads == [512, 128, 512]
  assert (
    config['optimizer_config']['eta'] == 0.02 and config['optimizer_config']['clip_trust_ratio']
  )
  assert config['lr_schedule_config']['base_learning_rate'] == 1.0
  # Linear evaluation rebuilds the same encoder, and the user's overrides come last.
  linear = eval_config.get_config(
    dataset=synthetic, overrides=['network_config.encoder_config.width_multiplier=2']
  )
  assert linear['network_config']['encoder_class'] == 'TinyResNet'
  assert linear['network_config']['encoder_config']['width_multiplier'] == 2
  assert (
    eval_config.get_config(dataset=synthetic)['network_config']['encoder_config'][
      'width_multiplier'
    ]
    == 4
  )
  # Other datasets keep the original's heads and LARS.
  imagenet = byol_config.get_config(100)
  assert imagenet['network_config']['projector_hidden_size'] == 4096
  assert imagenet['optimizer_config']['eta'] == 1e-3
  assert not imagenet['optimizer_config']['clip_trust_ratio']


def test_a_folder_of_images_gets_the_folder_recipe():
  assert datasets.preset('folder:/data/flowers') == datasets.PRESETS['folder']
  assert datasets.preset('oxford_flowers102') == {}  # Other TFDS datasets: ImageNet's recipe.
