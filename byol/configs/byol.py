"""Configuration of BYOL pretraining: `get_config(num_epochs, batch_size)` (SPEC section 5)."""

from typing import Any, Mapping

# Per pretraining length: base learning rate (before the batch_size / 256 scaling), base target EMA
# (tau at step 0) and weight decay, as published with the original.
PRESETS = {
  40: dict(base_learning_rate=0.45, base_target_ema=0.97, weight_decay=1e-6),
  100: dict(base_learning_rate=0.45, base_target_ema=0.99, weight_decay=1e-6),
  300: dict(base_learning_rate=0.3, base_target_ema=0.99, weight_decay=1e-6),
  1000: dict(base_learning_rate=0.2, base_target_ema=0.996, weight_decay=1.5e-6),
}

# ImageNet's TRAIN_AND_VALID split, which pretraining reads.
IMAGENET_TRAIN_IMAGES = 1_281_167

WARMUP_EPOCHS = 10

# What differs from the ImageNet recipe on smaller datasets, by dataset kind (`folder:PATH` is
# 'folder'). imagenette is the small-scale setup published with the original (SPEC 7): ResNet-18,
# base LR 2.0, weight decay 1e-6, batch 256, evaluation batch 25. CIFAR-10 and image folders start
# from it. The synthetic set is sized for a first run of a few minutes on a laptop CPU.
DATASET_PRESETS = {
  'imagenet2012': dict(),
  'imagenette': dict(
    encoder_class='ResNet18',
    base_learning_rate=2.0,
    weight_decay=1e-6,
    batch_size=256,
    eval_batch_size=25,
  ),
  'cifar10': dict(
    encoder_class='ResNet18',
    base_learning_rate=2.0,
    weight_decay=1e-6,
    batch_size=256,
    eval_batch_size=100,
  ),
  'folder': dict(
    encoder_class='ResNet18',
    base_learning_rate=2.0,
    weight_decay=1e-6,
    batch_size=256,
    eval_batch_size=100,
  ),
  # Measured on a 2-core CPU for 600 steps (README): at a base LR of 2.0 the tiny encoder's
  # embedding died (all ReLUs off); a faster-moving target suits a short run.
  'synthetic': dict(
    encoder_class='TinyResNet',
    base_learning_rate=0.2,
    weight_decay=1e-6,
    base_target_ema=0.99,
    batch_size=128,
    eval_batch_size=250,
  ),
}
DEFAULT_BATCH_SIZE = 4096
# Where checkpoints and logs go unless --checkpoint_root says otherwise.
DEFAULT_CHECKPOINT_ROOT = '/tmp/byol_checkpoints'


def dataset_preset(dataset_name: str) -> dict[str, Any]:
  """The entries of `DATASET_PRESETS` for a dataset name; other TFDS names get ImageNet's."""
  kind = 'folder' if dataset_name.startswith('folder:') else dataset_name
  return dict(DATASET_PRESETS.get(kind, {}))


def get_config(
  num_epochs: int,
  batch_size: int,
  *,
  train_images: int = IMAGENET_TRAIN_IMAGES,
  num_classes: int = 1000,
  recipe: Mapping[str, float] | None = None,
) -> dict[str, Any]:
  """Keyword arguments of `ByolExperiment` for a preset length and a total batch size.

  `train_images` and `num_classes` describe the pretraining set (ImageNet by default); `recipe`
  replaces entries of the length's preset (a dataset preset's learning rate, say).
  """
  if num_epochs not in PRESETS:
    raise ValueError(
      f'No preset for {num_epochs} pretraining epochs; choose one of {sorted(PRESETS)}.'
    )
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  preset = PRESETS[num_epochs]
  unknown = set(recipe or {}) - set(preset)
  if unknown:
    raise ValueError(f'A recipe sets {sorted(preset)}, not {sorted(unknown)}.')
  preset = {**preset, **(recipe or {})}
  steps_per_epoch = train_images / batch_size
  return dict(
    random_seed=0,
    num_classes=num_classes,
    batch_size=batch_size,
    max_steps=max(1, num_epochs * train_images // batch_size),
    base_target_ema=preset['base_target_ema'],
    network_config=dict(
      projector_hidden_size=4096,
      projector_output_size=256,
      predictor_hidden_size=4096,
      encoder_class='ResNet50',
      # zero_init_residual: the last BatchNorm scale of each block starts at 0 (Goyal et al.
      # 2017), as in the released code's Haiku blocks; the paper's networks start it at 1.
      encoder_config=dict(resnet_v2=False, width_multiplier=1, zero_init_residual=False),
      bn_config=dict(decay_rate=0.9, eps=1e-5, create_scale=True, create_offset=True),
      # 'bfloat16' computes the networks in bfloat16; parameters and statistics stay float32.
      compute_dtype='float32',
      # The routes of byol.utils.cpu_kernels (the same numbers, computed the way that is fast
      # on XLA:CPU): 'on', 'off', or 'auto' for on when JAX computes on the CPU only.
      cpu_kernels='auto',
    ),
    optimizer_config=dict(
      weight_decay=preset['weight_decay'], eta=1e-3, momentum=0.9, exclude_bias_from_adaption=True
    ),
    lr_schedule_config=dict(
      base_learning_rate=preset['base_learning_rate'],
      warmup_steps=int(WARMUP_EPOCHS * steps_per_epoch),
    ),
    dataset_config=dict(
      name='imagenet2012', data_dir=None, image_size=224, train_split='train_and_valid'
    ),
    evaluation_config=dict(subset='test', batch_size=100),
    checkpointing_config=dict(
      checkpoint_dir=DEFAULT_CHECKPOINT_ROOT, save_checkpoint_interval=300, filename='pretrain.pkl'
    ),
  )
