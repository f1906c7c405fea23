"""Evaluation over a whole split, shared by pretraining and linear evaluation: the classifier's
accuracy and loss, and the weighted kNN accuracy of the evaluated encoder's embedding.

Every example counts once: the last batch is completed with padding whose `mask` is 0, and the
per-batch sums stay on the devices until the end of the pass.
"""

from collections.abc import Callable, Iterable, Iterator, Mapping
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from byol.utils import helpers

Batch = Mapping[str, jax.Array]
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


def knn_votes(
  queries: jax.Array,
  bank_features: jax.Array,
  bank_labels: jax.Array,
  *,
  num_classes: int,
  k: int,
  temperature: float,
) -> jax.Array:
  """Weighted kNN class scores of `queries` [B, D] over a memory bank (Wu et al. 2018): [B, C].

  The k bank entries of highest cosine similarity s vote for their class with weight
  exp(s / temperature). `bank_features` [M, D] must be L2-normalised (`helpers.l2_normalize`);
  `bank_labels` is [M]. Fewer than k entries in the bank: all of them vote. A query whose
  embedding is zero (every ReLU off) is as similar to every entry: its votes are all 0, a tie that
  `helpers.topk_accuracy` never counts as correct, rather than the classes of whichever entries
  happen to come first.
  """
  # Full float32 products: TPUs would otherwise round the operands to bfloat16.
  similarity = jnp.matmul(
    helpers.l2_normalize(queries, axis=-1), bank_features.T, precision=jax.lax.Precision.HIGHEST
  )  # [B, M]
  top_similarity, top_index = jax.lax.top_k(similarity, min(k, bank_features.shape[0]))  # [B, k]
  weights = jnp.exp(top_similarity / temperature)  # [B, k]
  neighbour_classes = jax.nn.one_hot(bank_labels[top_index], num_classes)  # [B, k, C]
  votes = jnp.einsum('bk,bkc->bc', weights, neighbour_classes)  # [B, C]
  alive = jnp.any(queries != 0, axis=-1, keepdims=True)  # [B, 1]
  return jnp.where(alive, votes, 0.0)


def real_rows(
  embed_fn: Callable[[Batch], Batch], batches: Iterable[Batch]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Each batch's (embedding [B', D], labels [B']) on the host, padding rows (mask 0) left out.

  `embed_fn(batch)` returns the batch's `embedding`, `labels` and `mask`, replicated (the whole
  global batch on every process), so every process holds the same rows.
  """
  for batch in batches:
    outputs = helpers.to_host(embed_fn(batch))
    keep = outputs['mask'].astype(bool)  # [B]
    yield outputs['embedding'][keep], outputs['labels'][keep].astype(np.int64)


def knn_bank(
  embed_fn: Callable[[Batch], Batch],
  batches: Iterable[Batch],
  *,
  bank_per_class: int,
  mesh: jax.sharding.Mesh,
  num_classes: int,
  split_name: str,
) -> dict[str, jax.Array]:
  """The kNN memory bank: normalised embeddings [M, D] and labels [M] of training images.

  `batches` are the training split's, read as for evaluation (centre crops, no augmentation, every
  image once, padding masked out). `embed_fn` is as in `real_rows`, its `embedding` L2-normalised,
  so every process selects the same bank (`split_name` names the split in errors). With
  `bank_per_class` > 0 the bank holds the first that many images of each class met in reading
  order (which depends on the device count), and reading stops once every class has them.
  The bank is returned replicated on the devices of `mesh`.
  """
  start = time.time()
  per_class = bank_per_class
  counts = np.zeros(num_classes, np.int64)
  features, labels = [], []
  for embedding, batch_labels in real_rows(embed_fn, batches):  # [B', D], [B']
    keep = np.ones(len(batch_labels), bool)
    if per_class > 0:
      # Each row's rank among the rows of its class in this batch, from 0.
      same_class = batch_labels[:, None] == np.arange(num_classes)  # [B', C]
      rank = np.cumsum(same_class, axis=0)[np.arange(len(keep)), batch_labels] - 1
      keep &= counts[batch_labels] + rank < per_class
    counts += np.bincount(batch_labels[keep], minlength=num_classes)
    features.append(embedding[keep])
    labels.append(batch_labels[keep])
    if per_class > 0 and counts.min() >= per_class:
      break
  bank = dict(features=np.concatenate(features), labels=np.concatenate(labels).astype(np.int32))
  if not len(bank['labels']):
    raise ValueError(f'The {split_name} is empty: no kNN bank.')
  logging.info(
    'kNN bank of %d training images (%d to %d per class) in %.1f s.',
    len(bank['labels']),
    counts.min(),
    counts.max(),
    time.time() - start,
  )
  return jax.device_put(bank, helpers.replicated(mesh))


def evaluate_split(
  batch_sums_fn: Callable[[Batch], Scalars],
  batches: Iterable[Batch],
  *,
  global_step: int,
  split_name: str,
) -> dict[str, float]:
  """Accuracies, mean loss and example count of `batch_sums_fn` over the `batches` of a split
  (`split_name` names it in errors).

  `batch_sums_fn` returns a batch's sums (`masked_classification_sums`, plus e.g.
  `knn_top1_correct`); each `<name>_correct` becomes `<name>_accuracy`.
  """
  start = time.time()
  totals = None
  for batch in batches:
    sums = batch_sums_fn(batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError(f'The {split_name} is empty.')
  totals = helpers.to_host(totals)
  count = float(totals['num_examples'])
  logging.info(
    'Evaluated %d examples at step %d in %.1f s.', count, global_step, time.time() - start
  )
  accuracies = {
    name.removesuffix('_correct') + '_accuracy': float(total) / count
    for name, total in totals.items()
    if name.endswith('_correct')
  }
  return dict(accuracies, loss=float(totals['loss_sum']) / count, num_examples=count)
