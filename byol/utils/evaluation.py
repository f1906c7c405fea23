"""Classifier evaluation over a whole split, shared by pretraining and linear evaluation.

Every example counts once: the last batch is completed with padding whose `mask` is 0, and the
per-batch sums stay on the devices until the end of the pass.
"""

import time
from typing import Any, Callable, Mapping

from absl import logging
import jax
import jax.numpy as jnp

from byol.utils import dataset
from byol.utils import helpers

Scalars = dict[str, jax.Array]


def masked_classification_sums(
  logits: jax.Array, labels: jax.Array, mask: jax.Array, num_classes: int
) -> Scalars:
  """Sums over the real examples (mask 1) of a batch: count, correct top-1/5 and loss."""
  one_hot = jax.nn.one_hot(labels, num_classes)
  return dict(
    num_examples=jnp.sum(mask),
    top1_correct=jnp.sum(mask * helpers.topk_accuracy(logits, labels, topk=1)),
    top5_correct=jnp.sum(mask * helpers.topk_accuracy(logits, labels, topk=5)),
    loss_sum=jnp.sum(mask * helpers.softmax_cross_entropy(logits, one_hot)),
  )


def evaluate_split(
  batch_sums_fn: Callable[[Mapping[str, jax.Array]], Scalars],
  *,
  dataset_config: Mapping[str, Any],
  evaluation_config: Mapping[str, Any],
  sharding: jax.sharding.NamedSharding,
  global_step: int,
) -> dict[str, float]:
  """Top-1, top-5, mean loss and example count of `batch_sums_fn` over the evaluation split."""
  start = time.time()
  split = dataset.Split.from_string(evaluation_config['subset'])
  batches = dataset.load_to_devices(
    split,
    preprocess_mode=dataset.PreprocessMode.EVAL,
    global_batch_size=evaluation_config['batch_size'],
    dataset_config=dataset_config,
    sharding=sharding,
  )
  totals = None
  for batch in batches:
    sums = batch_sums_fn(batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError(f'The {split.name} split of {dataset_config["name"]} is empty.')
  totals = helpers.to_host(totals)
  count = float(totals['num_examples'])
  logging.info(
    'Evaluated %d examples at step %d in %.1f s.', count, global_step, time.time() - start
  )
  return dict(
    top1_accuracy=float(totals['top1_correct']) / count,
    top5_accuracy=float(totals['top5_correct']) / count,
    loss=float(totals['loss_sum']) / count,
    num_examples=count,
  )
