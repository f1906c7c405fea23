"""Configuration of linear evaluation and fine-tuning: `get_config(checkpoint_to_evaluate,
batch_size)` (SPEC 9)."""

from typing import Any, Sequence

from byol.configs import byol as byol_config
from byol.configs import datasets
from byol.utils import label_subset

# The paper's protocol: 80 epochs of SGD with Nesterov momentum, cosine decay, no warm-up.
NUM_EPOCHS = 80
# Fine-tuning (`fine_tune=True`), the paper's semi-supervised recipe (its appendix C): the whole
# network trained on the labelled examples with SGD and Nesterov momentum 0.9, random crops and
# flips (linear evaluation's preprocessing), for 30 or 50 epochs of them, the rate swept over
# {0.005, 0.01, 0.02, 0.05, 0.1} and chosen on a held-out validation set (`--base_learning_rates`
# does that), batch 1024. The preset takes 30 epochs and the middle rate, scaled by batch / 256
# like every base rate here.
FINE_TUNE_EPOCHS = 30
FINE_TUNE_BASE_LEARNING_RATE = 0.02
FINE_TUNE_BATCH_SIZE = 1024  # Unless the dataset's recipe has its own batch size.


def get_config(
  checkpoint_to_evaluate: str | None = None,
  batch_size: int | None = None,
  *,
  dataset: datasets.Dataset = datasets.IMAGENET,
  max_steps: int | None = None,
  checkpoint_root: str = byol_config.DEFAULT_CHECKPOINT_ROOT,
  overrides: Sequence[str] = (),
  fine_tune: bool = False,
  label_fraction: float = 1.0,
) -> dict[str, Any]:
  """Keyword arguments of `EvalExperiment`: the complete config of a linear evaluation, or of a
  fine-tuning run.

  Args:
    checkpoint_to_evaluate: the pretraining checkpoint whose encoder is evaluated (None: none,
      for a random encoder with `allow_train_from_scratch`).
    batch_size: the total batch size (None: the dataset's preset, or 4096).
    dataset: the images the classifier is trained and evaluated on (ImageNet by default).
    max_steps: the run's length instead of `NUM_EPOCHS` epochs.
    checkpoint_root: the folder of `linear-eval.pkl`.
    overrides: `key.path=value` entries set last, as `--override` does.
    fine_tune: train the encoder too, with the semi-supervised preset (`FINE_TUNE_EPOCHS`), into
      `fine-tune.pkl`.
    label_fraction: the share of each class's training examples whose labels are used
      (`byol.utils.label_subset`); the epochs are epochs of those examples.
  """
  label_subset.check_fraction(label_fraction)
  if fine_tune and batch_size is None:
    batch_size = datasets.preset(dataset.name).get('batch_size', FINE_TUNE_BATCH_SIZE)
  batch_size = datasets.batch_size(dataset, batch_size)
  num_epochs = FINE_TUNE_EPOCHS if fine_tune else NUM_EPOCHS
  # The subset's size is known once it is drawn; per class rounding makes it about this.
  labelled_images = max(1, round(label_fraction * dataset.train_images))
  config = dict(
    random_seed=0,
    num_classes=dataset.num_classes,
    batch_size=batch_size,
    max_steps=max(1, num_epochs * labelled_images // batch_size),
    checkpoint_to_evaluate=checkpoint_to_evaluate,
    allow_train_from_scratch=False,
    freeze_backbone=not fine_tune,
    network_config=byol_config.encoder_network_config(),
    optimizer_config=dict(momentum=0.9, nesterov=True),
    lr_schedule_config=dict(
      base_learning_rate=FINE_TUNE_BASE_LEARNING_RATE if fine_tune else 0.2, warmup_steps=0
    ),
    dataset_config=dict(
      datasets.dataset_config(dataset), label_fraction=float(label_fraction), label_seed=0
    ),
    evaluation_config=dict(subset='test', batch_size=100, knn=byol_config.knn_config(dataset)),
    checkpointing_config=dict(
      checkpoint_dir=checkpoint_root,
      save_checkpoint_interval=300,
      filename=f'{"fine-tune" if fine_tune else "linear-eval"}.pkl',
    ),
  )
  return datasets.specialise(config, dataset, max_steps=max_steps, overrides=overrides)
