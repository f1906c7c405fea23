"""What several test files share (STYLE: one support module, no test file importing another).

Tiny experiments built through the configs' own `get_config`, the checkpoints they write, and the
plumbing of tests that start processes.
"""

import contextlib
import fcntl
import logging
import os
import pathlib
import shutil
import socket
import subprocess
from typing import Any, Callable, Iterator, Sequence
import zlib

from absl import flags
from absl import logging as absl_logging
from absl.testing import flagsaver
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from byol import byol_experiment
from byol import eval_experiment
from byol.configs import byol as byol_config
from byol.configs import datasets
from byol.configs import eval as eval_config
from byol import main_loop
from byol.utils import dataset
from byol.utils import helpers
from byol.utils import synthetic
import pickle_like_2020  # This folder is on the path.

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The embedded synthetic images, read as 16 px crops, with 10 steps per epoch of 8.
NUM_CLASSES = synthetic.NUM_CLASSES  # 10
IMAGE_SIZE = 16
BATCH_SIZE = 8
TINY_DATASET = datasets.Dataset(
  'synthetic', num_classes=NUM_CLASSES, train_images=80, image_size=IMAGE_SIZE
)
_TINY_HEADS = (
  'network_config.projector_hidden_size=32',
  'network_config.projector_output_size=16',
  'network_config.predictor_hidden_size=32',
)


def pretrain_config(
  folder: os.PathLike | str,
  encoder: str = 'TinyResNet',
  width: int = 1,
  overrides: Sequence[str] = (),
) -> dict[str, Any]:
  """A pretraining config of a tiny encoder and heads on `TINY_DATASET`, saving to `folder`."""
  return byol_config.get_config(
    100,
    BATCH_SIZE,
    dataset=TINY_DATASET,
    checkpoint_root=str(folder),
    overrides=[
      f'network_config.encoder_class={encoder}',
      f'network_config.encoder_config.width_multiplier={width}',
      f'evaluation_config.batch_size={BATCH_SIZE}',
      *_TINY_HEADS,
      *overrides,
    ],
  )


def linear_eval_config(
  folder: os.PathLike | str,
  checkpoint: str | None,
  encoder: str = 'TinyResNet',
  overrides: Sequence[str] = (),
  width: int = 1,
) -> dict[str, Any]:
  """A linear-evaluation config on `TINY_DATASET` of the encoder in `checkpoint`."""
  return eval_config.get_config(
    checkpoint,
    BATCH_SIZE,
    dataset=TINY_DATASET,
    checkpoint_root=str(folder),
    overrides=[
      f'network_config.encoder_class={encoder}',
      f'network_config.encoder_config.width_multiplier={width}',
      f'evaluation_config.batch_size={BATCH_SIZE}',
      *overrides,
    ],
  )


def pretrain_experiment(
  folder: os.PathLike | str, encoder: str = 'TinyResNet', width: int = 1
) -> byol_experiment.ByolExperiment:
  """An experiment of `pretrain_config`, not yet initialised."""
  return byol_experiment.ByolExperiment(**pretrain_config(folder, encoder, width))


def linear_eval_experiment(
  folder: os.PathLike | str,
  checkpoint: str | None,
  *,
  freeze_backbone: bool = True,
  encoder: str = 'TinyResNet',
  allow_train_from_scratch: bool = False,
) -> eval_experiment.EvalExperiment:
  """An experiment of `linear_eval_config`, not yet initialised."""
  config = linear_eval_config(
    folder,
    checkpoint,
    encoder,
    overrides=[
      f'freeze_backbone={freeze_backbone}',
      f'allow_train_from_scratch={allow_train_from_scratch}',
    ],
  )
  return eval_experiment.EvalExperiment(**config)


def write_pretrain_checkpoint(
  folder: os.PathLike | str, encoder: str = 'TinyResNet', width: int = 1
) -> tuple[str, Any]:
  """Saves a freshly initialised pretraining state at step 10; returns its path and the state."""
  experiment = pretrain_experiment(folder, encoder, width)
  experiment.initialize(jax.random.key(0))
  experiment.save_checkpoint(global_step=10, rng=jax.random.key(1))
  return experiment.checkpoint_path, helpers.to_host(experiment.state)


def write_2020_release_file(path: os.PathLike | str, pretrain_state: Any) -> str:
  """`pretrain_state`'s networks in a file pickled as DeepMind's 2020 release files were."""
  networks = ('online_params', 'target_params', 'online_state', 'target_state')
  pickle_like_2020.write(
    {field: getattr(pretrain_state, field) for field in networks}, str(path), 'global'
  )
  return str(path)


def synthetic_train_batches(mode: dataset.PreprocessMode) -> dataset.HostBatches:
  """A quick training pipeline: the synthetic TRAIN split at 16 px in batches of 4, one shard,
  seed 0 (the same batches every time)."""
  return dataset.load(
    dataset.Split.TRAIN,
    dataset_name='synthetic',
    preprocess_mode=mode,
    batch_dims=[4],
    image_size=16,
    shards=[0],
    num_shards=1,
    seed=0,
  )


def random_views(
  experiment: byol_experiment.ByolExperiment, image_size: int = IMAGE_SIZE, seed: int = 0
) -> dict[str, jax.Array]:
  """A pretraining batch of `BATCH_SIZE` uniform-noise views, on the experiment's devices."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(2, BATCH_SIZE, image_size, image_size, 3)).astype(np.float32)
  batch = dict(
    view1=images[0],
    view2=images[1],
    labels=rng.integers(0, NUM_CLASSES, BATCH_SIZE).astype(np.int32),
  )
  return helpers.to_global_batch(batch, experiment.batch_sharding)


def one_update(folder: os.PathLike | str) -> dict[str, np.ndarray]:
  """Every array after one update of a fresh pretraining experiment on a fixed global batch.

  Keyed by path (`['online_params']['classifier']['w']`, ..., `['logs']['loss']`): the batch, keys
  and config do not depend on the device count, so neither must these.
  """
  experiment = pretrain_experiment(folder)
  experiment.initialize(jax.random.key(0))
  batch = random_views(experiment)
  state, logs = experiment.update(experiment.state, batch, jax.random.key(1), np.int32(3))
  state, logs = helpers.to_host((state, logs))
  networks = ('online_params', 'online_state', 'target_params', 'target_state')
  tree = dict({name: getattr(state, name) for name in networks}, logs=logs)
  return {
    jax.tree_util.keystr(path): np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


# The command line, in this process.

# Examples per split of the mock TFDS datasets of `mock_tfds`.
MOCK_NUM_EXAMPLES = 24


@contextlib.contextmanager
def mock_tfds(num_examples: int = MOCK_NUM_EXAMPLES) -> Iterator[None]:
  """Every TFDS dataset (ImageNet too) is `num_examples` random JPEGs per split, while inside.

  The examples are built from tensors, not TFDS's default Python generator: tf.data's threads
  reading a generator need the GIL, and destroying such a pipeline with reads in flight deadlocks.
  """

  def encoded_examples(builder, split, decoders=None, read_config=None, **kwargs):
    del decoders, read_config, kwargs  # Left encoded, as `byol.utils.dataset` reads them.
    rng = np.random.default_rng(zlib.crc32(str(split).encode()))  # The same data in every run.
    images = [
      tf.io.encode_jpeg(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).numpy()
      for height, width in rng.integers(24, 64, (num_examples, 2))
    ]
    labels = rng.integers(0, builder.info.features['label'].num_classes, num_examples)
    return tf.data.Dataset.from_tensor_slices({'image': images, 'label': labels})

  with tfds.testing.mock_data(as_dataset_fn=encoded_examples):
    yield


class _Lines(logging.Handler):
  def __init__(self):
    super().__init__(logging.INFO)
    self.lines = []

  def emit(self, record: logging.LogRecord) -> None:
    self.lines.append(record.getMessage())


def run_program(module: Any, monkeypatch: Any, *argv: str) -> None:
  """`python -m <module> *argv` in this process, for programs that define their flags with
  `define_flags(flag_values)` when run: on flags of their own, so nothing leaks into `flags.FLAGS`.
  """
  values = flags.FlagValues()
  module.define_flags(values)
  values([module.__name__, *argv])
  monkeypatch.setattr(module, 'FLAGS', values)
  module.main([module.__name__])


def run_main_loop(*argv: str) -> tuple[int, str]:
  """`python -m byol.main_loop *argv` in this process; its exit code and what it logged.

  A value the flags refuse exits with code 1 and absl's message, as on the command line; the
  flags are restored afterwards.
  """
  logger = absl_logging.get_absl_logger()
  lines, level = _Lines(), logger.level
  with flagsaver.flagsaver():
    try:
      flags.FLAGS(['byol.main_loop', *argv])
    except flags.Error as error:
      return 1, f'FATAL Flags parsing error: {error}'
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
      main_loop.main(['byol.main_loop'])
      code = 0
    except SystemExit as exit:
      code = 1
      lines.lines.append(str(exit.code))
    finally:
      logger.removeHandler(lines)
      logger.setLevel(level)
  return code, '\n'.join(lines.lines)


def write_image_folder(root, layout, image_format='png'):
  """Writes `{split: {class: count}}` random images of various sizes under `root`."""
  rng = np.random.default_rng(0)
  encode = tf.io.encode_png if image_format == 'png' else tf.io.encode_jpeg
  for split, classes in layout.items():
    (root / split).mkdir(parents=True)
    for name, count in classes.items():
      (root / split / name).mkdir()
      for index in range(count):
        image = rng.integers(0, 256, (20 + index, 30 - index, 3), dtype=np.uint8)
        (root / split / name / f'{index}.{image_format}').write_bytes(encode(image).numpy())
  return f'folder:{root}'


# Folders the workers of a session share.


def once_per_session(
  tmp_path_factory: Any, name: str, make: Callable[[pathlib.Path], None]
) -> pathlib.Path:
  """The folder `name`, filled by `make(folder)` once per test session.

  The workers of `pytest -n` share it: the first to ask makes it under a lock, while the others
  wait for it; a folder left half-made (its maker failed) is made again.
  """
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # The session's folder, above each worker's own.
  folder, complete = root / name, root / f'{name}.complete'
  with open(root / f'{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
    if not complete.exists():
      shutil.rmtree(folder, ignore_errors=True)
      folder.mkdir()
      make(folder)
      complete.touch()
  return folder


# Tests that start processes.


# XLA's flags for the tests, here and in the processes they start (see conftest.py). Both exist in
# jaxlib 0.10.2; a jaxlib without one of them stops at start with "Unknown flags in XLA_FLAGS":
# then drop it here (the suite only gets slower).
TEST_XLA_FLAGS = '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'


def environment(*, devices: int = 1, **extra: str) -> dict[str, str]:
  """The environment of a test's subprocess: quiet TensorFlow, this checkout first, `devices`
  CPU devices and the suite's XLA flags (see conftest.py)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=str(ROOT))
  env['XLA_FLAGS'] = f'{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}'
  env.update(extra)
  return env


def free_port() -> int:
  """A TCP port of 127.0.0.1 that nothing listens on now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
  """The exit code and output of `process`, once it ends."""
  output, _ = process.communicate(timeout=timeout)
  return process.returncode, output


def finish_runs(*runs: Sequence[subprocess.Popen]) -> list[list[tuple[int, str]]]:
  """Exit codes and outputs of every process of `runs`; kills all of them if one hangs."""
  try:
    return [[finish(process) for process in run] for run in runs]
  finally:
    for process in (process for run in runs for process in run):
      process.kill()


def assert_one_clear_error(code: int, output: str, *fragments: str) -> None:
  """A failure reported in a message holding every fragment, without a traceback."""
  assert code != 0, output
  assert 'Traceback' not in output, output
  for fragment in fragments:
    assert fragment in output, output


class RunsACommand:
  """Pickles to `os.system(command)`: the classic malicious checkpoint."""

  def __init__(self, command: str):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))
