"""Configuration of linear evaluation: `get_config(checkpoint_to_evaluate, batch_size)` (SPEC 9)."""

from typing import Any, Sequence

from byol.configs import byol as byol_config
from byol.configs import datasets

# The paper's protocol: 80 epochs of SGD with Nesterov momentum, cosine decay, no warm-up.
NUM_EPOCHS = 80


def get_config(
  checkpoint_to_evaluate: str | None = None,
  batch_size: int | None = None,
  *,
  dataset: datasets.Dataset = datasets.IMAGENET,
  max_steps: int | None = None,
  checkpoint_root: str = byol_config.DEFAULT_CHECKPOINT_ROOT,
  overrides: Sequence[str] = (),
) -> dict[str, Any]:
  """Keyword arguments of `EvalExperiment`: the complete config of a linear evaluation.

  Args:
    checkpoint_to_evaluate: the pretraining checkpoint whose encoder is evaluated (None: none,
      for a random encoder with `allow_train_from_scratch`).
    batch_size: the total batch size (None: the dataset's preset, or 4096).
    dataset: the images the classifier is trained and evaluated on (ImageNet by default).
    max_steps: the run's length instead of `NUM_EPOCHS` epochs.
    checkpoint_root: the folder of `linear-eval.pkl`.
    overrides: `key.path=value` entries set last, as `--override` does.
  """
  batch_size = datasets.batch_size(dataset, batch_size)
  config = dict(
    random_seed=0,
    num_classes=dataset.num_classes,
    batch_size=batch_size,
    max_steps=max(1, NUM_EPOCHS * dataset.train_images // batch_size),
    checkpoint_to_evaluate=checkpoint_to_evaluate,
    allow_train_from_scratch=False,
    freeze_backbone=True,
    network_config=byol_config.encoder_network_config(),
    optimizer_config=dict(momentum=0.9, nesterov=True),
    lr_schedule_config=dict(base_learning_rate=0.2, warmup_steps=0),
    dataset_config=datasets.dataset_config(dataset),
    evaluation_config=dict(subset='test', batch_size=100, knn=byol_config.knn_config(dataset)),
    checkpointing_config=dict(
      checkpoint_dir=checkpoint_root, save_checkpoint_interval=300, filename='linear-eval.pkl'
    ),
  )
  return datasets.specialise(config, dataset, max_steps=max_steps, overrides=overrides)
