"""The kNN monitor of pretraining's eval worker against a weighted kNN written in numpy."""

import jax
import numpy as np
import pytest

from byol import byol_experiment
from byol import eval_experiment
from byol.utils import evaluation
from byol.utils import helpers
import support  # This folder is on the path.


def numpy_knn(queries, bank, bank_labels, num_classes, k, temperature):
  """Wu et al. (2018)'s weighted kNN: the k most cosine-similar bank rows vote exp(s / T).

  Returns the predicted classes (-1 for a zero query, equally similar to every row, and where
  two classes have the same vote: never correct) and which predictions are stable: float32
  rounding cannot change them (no near-tie between the k-th and the next neighbour, nor between
  the two best classes).
  """
  queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
  bank = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
  predictions, stable = [], []
  for query in np.float64(queries):
    if not np.any(query):
      predictions.append(-1)
      stable.append(True)
      continue
    similarity = bank @ query
    order = np.argsort(-similarity, kind='stable')
    nearest = order[:k]
    votes = np.zeros(num_classes)
    np.add.at(votes, bank_labels[nearest], np.exp(similarity[nearest] / temperature))
    best, second = np.sort(votes)[::-1][:2]
    predictions.append(-1 if best == second else np.argmax(votes))
    boundary_gap = similarity[order[k - 1]] - similarity[order[k]] if k < len(bank) else 1.0
    stable.append(boundary_gap > 1e-5 and (best - second) > 1e-4 * best)
  return np.array(predictions), np.array(stable)


@pytest.mark.parametrize('k', [1, 7, 500])  # 500: more than the bank holds, so all of it votes.
def test_knn_votes_predict_the_classes_of_a_numpy_knn(k):
  rng = np.random.default_rng(k)
  num_classes, dim = 6, 16
  # Classes are clusters, so the nearest neighbours mostly share the query's class.
  centres = rng.normal(size=(num_classes, dim))
  bank_labels = rng.integers(0, num_classes, 300)
  bank = centres[bank_labels] + 1.5 * rng.normal(size=(300, dim))
  query_labels = rng.integers(0, num_classes, 40)
  queries = centres[query_labels] + 1.5 * rng.normal(size=(40, dim))

  votes = evaluation.knn_votes(
    np.float32(queries),
    helpers.l2_normalize(np.float32(bank), axis=-1),
    np.int32(bank_labels),
    num_classes=num_classes,
    k=k,
    temperature=0.07,
  )
  expected, stable = numpy_knn(queries, bank, bank_labels, num_classes, k, 0.07)
  assert stable.all()
  np.testing.assert_array_equal(np.argmax(votes, axis=1), expected)
  # Informative neighbours: most queries are right (and not trivially all).
  assert 0.4 < np.mean(expected == query_labels) < 1.0


def test_knn_votes_weigh_closer_neighbours_more():
  # Two neighbours of class 0 at similarity 0.6 outvote one of class 1 at 0.7 when T is large
  # (weights ~1 each), and lose to it when T is small (exp(0.7 / T) dominates).
  bank = np.array([[0.6, 0.8], [0.6, -0.8], [0.7, np.sqrt(1 - 0.49)]], np.float32)
  labels = np.array([0, 0, 1], np.int32)
  query = np.array([[1.0, 0.0]], np.float32)
  for temperature, winner in ((100.0, 0), (0.01, 1)):
    votes = evaluation.knn_votes(query, bank, labels, num_classes=2, k=3, temperature=temperature)
    assert int(np.argmax(votes)) == winner, temperature
  # A zero query (a dead embedding) is as close to every entry: no class gets a vote.
  votes = evaluation.knn_votes(
    np.zeros((1, 2), np.float32), bank, labels, num_classes=2, k=2, temperature=0.07
  )
  np.testing.assert_array_equal(votes, [[0.0, 0.0]])


@pytest.fixture(scope='module')
def experiment(tmp_path_factory):
  # Batches of 100: the bank embeds all 5000 training images. Twice the narrowest width: 16-d
  # embeddings, with fewer near-ties between the grey images' neighbours than 8-d ones.
  config = support.pretrain_config(
    tmp_path_factory.mktemp('knn'), width=2, overrides=['evaluation_config.batch_size=100']
  )
  experiment = byol_experiment.ByolExperiment(**config)
  experiment.initialize(jax.random.key(0))
  return experiment


def bank_of(experiment, bank_per_class):
  state = experiment.state
  bank = evaluation.knn_bank(
    lambda batch: experiment._embed_batch(state, batch),
    experiment._eval_batches(experiment._dataset_config['train_split']),
    bank_per_class=bank_per_class,
    mesh=experiment.batch_sharding.mesh,
    num_classes=support.NUM_CLASSES,
    split_name='train split',
  )
  return helpers.to_host(bank)


def test_bank_holds_every_training_image_or_the_first_of_each_class(experiment):
  whole = bank_of(experiment, bank_per_class=0)
  # The synthetic training split, each image once, its embedding of unit norm.
  assert whole['features'].shape[0] == whole['labels'].shape[0] == 5000
  np.testing.assert_allclose(np.linalg.norm(whole['features'], axis=1), 1.0, rtol=1e-5)
  assert np.bincount(whole['labels']).tolist() == [500] * support.NUM_CLASSES

  balanced = bank_of(experiment, bank_per_class=3)
  assert np.bincount(balanced['labels']).tolist() == [3] * support.NUM_CLASSES
  # The first three of each class in reading order, in that order.
  first = np.concatenate(
    [np.flatnonzero(whole['labels'] == label)[:3] for label in range(support.NUM_CLASSES)]
  )
  first.sort()
  np.testing.assert_array_equal(balanced['labels'], whole['labels'][first])
  np.testing.assert_allclose(balanced['features'], whole['features'][first], rtol=1e-6, atol=1e-7)


def test_evaluation_counts_the_knn_top1_of_each_test_batch_as_numpy_does(experiment):
  # The online embedding of each test batch, against the bank of training images: per batch, the
  # count of correct kNN predictions equals numpy's (up to the queries float32 rounding could
  # flip: the tiny encoder's 16-d embeddings of a random initialisation have near-ties).
  bank = bank_of(experiment, bank_per_class=0)
  device_bank = jax.device_put(bank)
  state = experiment.state
  test_batches = experiment._eval_batches('test')
  total, unstable = 0.0, 0
  for batch in test_batches:
    sums = experiment._eval_batch(state, batch, device_bank)
    outputs = helpers.to_host(experiment._embed_batch(state, batch))
    keep = outputs['mask'].astype(bool)
    predictions, stable = numpy_knn(
      outputs['embedding'][keep],
      bank['features'],
      bank['labels'],
      support.NUM_CLASSES,
      k=200,
      temperature=0.07,
    )
    expected = np.sum(predictions == outputs['labels'][keep])
    assert abs(float(sums['knn_top1_correct']) - expected) <= np.sum(~stable)
    total += float(sums['knn_top1_correct'])
    unstable += np.sum(~stable)
  assert unstable < 100  # Of 1000 (28 here): the comparison is exact for the rest.
  # `evaluate` reports the same count over every test example once.
  results = experiment.evaluate(global_step=0)
  assert results['num_examples'] == 1000
  assert results['knn_top1_accuracy'] == total / 1000
  assert {'top1_accuracy', 'top5_accuracy', 'loss'} <= results.keys()


def test_knn_is_off_with_k_0(tmp_path):
  config = support.pretrain_config(tmp_path, overrides=['evaluation_config.knn.k=0'])
  experiment = byol_experiment.ByolExperiment(**config)
  experiment.initialize(jax.random.key(0))
  assert 'knn_top1_accuracy' not in experiment.evaluate(global_step=0)


def test_linear_evaluation_reports_the_knn_top1_of_the_encoder_it_evaluates(experiment, tmp_path):
  # Linear evaluation of a pretraining checkpoint embeds with the same encoder as the pretraining
  # eval worker: the same kNN accuracy (up to near-ties of float32 rounding), beside its own top-1.
  experiment.save_checkpoint(global_step=0, rng=jax.random.key(1))
  pretraining = experiment.evaluate(global_step=0)
  config = support.linear_eval_config(
    tmp_path, experiment.checkpoint_path, overrides=['evaluation_config.batch_size=100'], width=2
  )
  linear = eval_experiment.EvalExperiment(**config)
  linear.initialize(jax.random.key(2))
  results = linear.evaluate(global_step=0)
  assert results['knn_top1_accuracy'] == pytest.approx(pretraining['knn_top1_accuracy'], abs=0.003)
  assert results['num_examples'] == 1000 and 'top1_accuracy' in results
