"""Configuration of linear evaluation: `get_config(checkpoint_to_evaluate, batch_size)` (SPEC 9)."""

from typing import Any

from byol.configs import byol as byol_config

# The paper's protocol: 80 epochs of SGD with Nesterov momentum, cosine decay, no warm-up.
NUM_EPOCHS = 80


def get_config(
  checkpoint_to_evaluate: str | None,
  batch_size: int,
  *,
  train_images: int = byol_config.IMAGENET_TRAIN_IMAGES,
  num_classes: int = 1000,
) -> dict[str, Any]:
  """Keyword arguments of `EvalExperiment`: a linear classifier on a pretrained encoder."""
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  return dict(
    random_seed=0,
    num_classes=num_classes,
    batch_size=batch_size,
    max_steps=max(1, NUM_EPOCHS * train_images // batch_size),
    checkpoint_to_evaluate=checkpoint_to_evaluate,
    allow_train_from_scratch=False,
    freeze_backbone=True,
    network_config=dict(
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
    optimizer_config=dict(momentum=0.9, nesterov=True),
    lr_schedule_config=dict(base_learning_rate=0.2, warmup_steps=0),
    dataset_config=dict(
      name='imagenet2012', data_dir=None, image_size=224, train_split='train_and_valid'
    ),
    evaluation_config=dict(subset='test', batch_size=100),
    checkpointing_config=dict(
      checkpoint_dir=byol_config.DEFAULT_CHECKPOINT_ROOT,
      save_checkpoint_interval=300,
      filename='linear-eval.pkl',
    ),
  )
