"""Configuration of BYOL pretraining: `get_config(num_epochs, batch_size)` (SPEC section 5)."""

from typing import Any, Sequence

from byol.configs import datasets

# Per pretraining length: base learning rate (before the batch_size / 256 scaling), base target EMA
# (tau at step 0) and weight decay, as published with the original.
PRESETS = {
  40: dict(base_learning_rate=0.45, base_target_ema=0.97, weight_decay=1e-6),
  100: dict(base_learning_rate=0.45, base_target_ema=0.99, weight_decay=1e-6),
  300: dict(base_learning_rate=0.3, base_target_ema=0.99, weight_decay=1e-6),
  1000: dict(base_learning_rate=0.2, base_target_ema=0.996, weight_decay=1.5e-6),
}

WARMUP_EPOCHS = 10
# Training sets up to this size are the kNN monitor's bank whole; larger ones (ImageNet) in part.
KNN_WHOLE_SPLIT_LIMIT = 100_000
# Where checkpoints and logs go unless --checkpoint_root says otherwise.
DEFAULT_CHECKPOINT_ROOT = '/tmp/byol_checkpoints'


def encoder_network_config() -> dict[str, Any]:
  """The encoder's entries of `network_config`: the same in linear evaluation, which rebuilds the
  encoder that pretraining trained."""
  return dict(
    encoder_class='ResNet50',
    # zero_init_residual: the last BatchNorm scale of each block starts at 0 (Goyal et al. 2017),
    # as in the released code's Haiku blocks; the paper's networks start it at 1.
    # small_image_stem: a 3x3 stride-1 first convolution and no max-pool, for ~32 px images.
    encoder_config=dict(
      resnet_v2=False, width_multiplier=1, zero_init_residual=False, small_image_stem=False
    ),
    bn_config=dict(decay_rate=0.9, eps=1e-5, create_scale=True, create_offset=True),
    # 'bfloat16' computes the networks in bfloat16; parameters and statistics stay float32.
    compute_dtype='float32',
    # The routes of byol.utils.cpu_kernels (the same numbers, computed the way that is fast on
    # XLA:CPU): 'on', 'off', or 'auto' for on when JAX computes on the CPU only.
    cpu_kernels='auto',
  )


def knn_config(dataset: datasets.Dataset) -> dict[str, Any]:
  """The eval workers' kNN accuracy of the evaluated encoder (Wu et al. 2018), in both modes."""
  # The k most similar training images vote with weight exp(cosine similarity / temperature);
  # k=0 turns it off. The bank holds every training image, or bank_per_class of each class
  # (ImageNet: 50, 50,000 in all).
  return dict(
    k=200,
    temperature=0.07,
    bank_per_class=0 if dataset.train_images <= KNN_WHOLE_SPLIT_LIMIT else 50,
  )


def get_config(
  num_epochs: int = 1000,
  batch_size: int | None = None,
  *,
  dataset: datasets.Dataset = datasets.IMAGENET,
  max_steps: int | None = None,
  checkpoint_root: str = DEFAULT_CHECKPOINT_ROOT,
  overrides: Sequence[str] = (),
) -> dict[str, Any]:
  """Keyword arguments of `ByolExperiment`: the complete config of a pretraining run.

  Args:
    num_epochs: the preset length (one of `PRESETS`), which sets the learning rate, the target EMA
      and the weight decay unless the dataset's recipe sets them.
    batch_size: the total batch size (None: the dataset's preset, or 4096).
    dataset: the pretraining set (`datasets.describe(name)`; ImageNet by default).
    max_steps: the run's length instead of `num_epochs` epochs (the warm-up keeps its share).
    checkpoint_root: the folder of `pretrain.pkl`.
    overrides: `key.path=value` entries set last, as `--override` does.
  """
  if num_epochs not in PRESETS:
    raise ValueError(
      f'No preset for {num_epochs} pretraining epochs; choose one of {sorted(PRESETS)}.'
    )
  batch_size = datasets.batch_size(dataset, batch_size)
  # The dataset's recipe replaces the length's preset where it has an entry.
  recipe = datasets.preset(dataset.name)
  preset = {key: recipe.get(key, value) for key, value in PRESETS[num_epochs].items()}
  steps_per_epoch = dataset.train_images / batch_size
  config = dict(
    random_seed=0,
    num_classes=dataset.num_classes,
    batch_size=batch_size,
    max_steps=max(1, num_epochs * dataset.train_images // batch_size),
    base_target_ema=preset['base_target_ema'],
    network_config=dict(
      projector_hidden_size=recipe.get('projector_hidden_size', 4096),
      projector_output_size=recipe.get('projector_output_size', 256),
      predictor_hidden_size=recipe.get('predictor_hidden_size', 4096),
      **encoder_network_config(),
    ),
    optimizer_config=dict(
      weight_decay=preset['weight_decay'],
      eta=recipe.get('eta', 1e-3),
      momentum=0.9,
      exclude_bias_from_adaption=True,
      # True caps LARS's trust ratio at 1 (not the original's; for short small-batch runs).
      clip_trust_ratio=recipe.get('clip_trust_ratio', False),
    ),
    lr_schedule_config=dict(
      base_learning_rate=preset['base_learning_rate'],
      warmup_steps=int(WARMUP_EPOCHS * steps_per_epoch),
    ),
    dataset_config=datasets.dataset_config(dataset),
    evaluation_config=dict(subset='test', batch_size=100, knn=knn_config(dataset)),
    checkpointing_config=dict(
      checkpoint_dir=checkpoint_root, save_checkpoint_interval=300, filename='pretrain.pkl'
    ),
  )
  return datasets.specialise(config, dataset, max_steps=max_steps, overrides=overrides)
