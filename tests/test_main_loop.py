"""End to end through `python -m byol.main_loop`: train worker, eval worker, resume, bad input."""

import errno
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time

from absl import flags as absl_flags  # `flags` names the command lines of the tests.
import jax
import numpy as np
import pytest

from byol import byol_experiment
from byol import plot
from byol import quickstart
from byol.utils import checkpointing
from byol.utils import dataset
import support

TINY_RUN = [
  '--encoder=TinyResNet',
  '--image_size=32',
  '--batch_size=8',
  '--eval_batch_size=10',
  '--log_tensors_interval=0',
  '--eval_poll_interval=0.2',
]


def start(*flags, mock=True):
  """`python -m byol.main_loop *flags` in a process of its own (on the mock TFDS datasets)."""
  runner = [str(support.ROOT / 'tests' / 'mock_data_main.py')] if mock else ['-m', 'byol.main_loop']
  return subprocess.Popen(
    [sys.executable, *runner, *flags],
    cwd=support.ROOT,
    env=support.environment(),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def run(*flags):
  """`python -m byol.main_loop *flags` in this process, on the mock TFDS datasets."""
  with support.mock_tfds():
    return support.run_main_loop(*flags)


def checkpoint_step(root):
  return checkpointing.load_checkpoint(str(root / 'pretrain.pkl'))['step']


def train_checkpointing_every_step(root, max_steps, *flags):
  """A tiny train worker in `root` that saves a checkpoint (and input position) at every step."""
  return run(
    '--worker_mode=train',
    f'--checkpoint_root={root}',
    f'--max_steps={max_steps}',
    '--save_checkpoint_interval=0',
    *TINY_RUN,
    # Small heads: checkpoints of kilobytes, not the 40 MB of 4096-wide ones, at every step.
    '--override=network_config.projector_hidden_size=32',
    '--override=network_config.projector_output_size=16',
    '--override=network_config.predictor_hidden_size=32',
    *flags,
  )


def test_train_worker_checkpoints_and_eval_worker_evaluates_final_step(tmp_path):
  flags = [f'--checkpoint_root={tmp_path}', '--max_steps=3', *TINY_RUN]
  # The eval worker in a process of its own, polling while this process trains.
  evaluator = start('--worker_mode=eval', *flags)
  try:
    train_code, train_output = run('--worker_mode=train', *flags)
    assert train_code == 0, train_output
    eval_code, eval_output = support.finish(evaluator)
    assert eval_code == 0, eval_output
  finally:
    evaluator.kill()  # Left polling forever if the train worker failed.

  assert checkpoint_step(tmp_path) == 3
  assert 'step 3/3' in train_output and 'images/s' in train_output and 'ETA' in train_output
  assert 'No checkpoint to resume from' in train_output
  train_log = [json.loads(line) for line in open(tmp_path / 'pretrain_train.jsonl')]
  assert [entry['step'] for entry in train_log] == [1, 2, 3]
  assert {
    'loss',
    'repr_loss',
    'classif_loss',
    'top1_accuracy',
    'top5_accuracy',
    'learning_rate',
    'tau',
  } <= set(train_log[-1])
  eval_log = [json.loads(line) for line in open(tmp_path / 'pretrain_eval.jsonl')]
  # The final step is evaluated exactly once, over every test example (24 with batches of 10).
  assert [entry['step'] for entry in eval_log].count(3) == 1
  assert eval_log[-1]['num_examples'] == support.MOCK_NUM_EXAMPLES
  assert 0.0 <= eval_log[-1]['top1_accuracy'] <= eval_log[-1]['top5_accuracy'] <= 1.0
  assert 0.0 <= eval_log[-1]['knn_top1_accuracy'] <= 1.0
  assert re.search(r'eval step 3 \| .*knn_top1_accuracy=[\d.]+, .*top1_accuracy=', eval_output)
  assert 'Evaluated the final step 3' in eval_output
  # Both workers' curves, drawn from those logs.
  assert plot.plot(str(tmp_path)) == str(tmp_path / 'pretrain_curves.png')


def test_a_fresh_run_saves_its_initial_state_as_step_0(tmp_path, monkeypatch):
  # The first update fails: the initial state was already saved, for an eval worker's step 0.
  def failing_step(self, *, global_step, rng):
    raise RuntimeError(f'update {global_step} failed')

  monkeypatch.setattr(byol_experiment.ByolExperiment, 'step', failing_step)
  with pytest.raises(RuntimeError, match='update 0 failed'):
    run('--worker_mode=train', f'--checkpoint_root={tmp_path}', '--max_steps=3', *TINY_RUN)
  deadline = time.time() + 60  # Written in the background while the first update started.
  while not (tmp_path / 'pretrain.pkl').exists():
    assert time.time() < deadline, 'no step-0 checkpoint'
    time.sleep(0.1)
  checkpoint = checkpointing.load_checkpoint(str(tmp_path / 'pretrain.pkl'))
  assert checkpoint['step'] == 0
  # The state before any update: every momentum of the optimiser is still zero.
  momenta = jax.tree.leaves(checkpoint['experiment_state'].opt_state)
  assert any(leaf.size > 1000 for leaf in momenta)
  assert all(not np.any(leaf) for leaf in momenta if np.issubdtype(leaf.dtype, np.floating))


def test_missing_imagenet_is_one_clear_message(tmp_path):
  code, output = support.run_main_loop('--worker_mode=train', f'--data_dir={tmp_path}')
  support.assert_one_clear_error(
    code, output, 'imagenet2012', 'manual', '--data_dir', 'TFDS_DATA_DIR'
  )


@pytest.mark.parametrize(
  'flags, message',
  [
    ('--pretrain_epochs=50', '--pretrain_epochs must be one of'),
    ('--encoder=ResNet51', 'ResNet51'),
    ('--worker_mode=serve', 'serve'),
    ('--base_learning_rates=0.1,fast', 'comma-separated list of positive numbers'),
    ('--base_learning_rates=0.1', 'use it with --experiment_mode=linear-eval or fine-tune'),
    ('--label_fraction=0', '--label_fraction must be in (0, 1]'),
    ('--label_fraction=0.1', '--label_fraction is for --experiment_mode=linear-eval or fine-tune'),
    ('--process_id=1', 'needs all of --coordinator_address, --num_processes and --process_id'),
    (
      '--coordinator_address=127.0.0.1:1 --num_processes=2 --process_id=2',
      '--process_id must be below --num_processes',
    ),
  ],
)
def test_unknown_flag_values_are_clear_errors(tmp_path, flags, message):
  code, output = support.run_main_loop(f'--checkpoint_root={tmp_path}', *flags.split())
  support.assert_one_clear_error(code, output, message)


def test_a_cluster_that_cannot_be_detected_is_a_clear_error(tmp_path):
  # In a process of its own: JAX's multi-process runtime is joined once per process.
  code, output = support.finish(start(f'--checkpoint_root={tmp_path}', '--distributed', mock=False))
  support.assert_one_clear_error(code, output, 'Could not join the run of several processes')


def test_a_non_finite_loss_stops_training_before_it_is_saved(tmp_path):
  # A learning rate this large makes the parameters overflow within a few steps. Logs are rare,
  # so the loss is checked because a checkpoint is due.
  code, output = train_checkpointing_every_step(
    tmp_path,
    20,
    '--log_tensors_interval=1000',
    '--override=lr_schedule_config.base_learning_rate=1e30',
  )
  support.assert_one_clear_error(code, output, 'The loss became', 'stopping without saving')
  step = int(re.search(r'The loss became \S+ at step (\d+)', output).group(1))
  checkpoint = checkpointing.load_checkpoint(str(tmp_path / 'pretrain.pkl'))
  assert checkpoint['step'] == step - 1  # The last good step's checkpoint...
  for leaf in jax.tree.leaves(checkpoint['experiment_state']):
    assert np.all(np.isfinite(leaf))  # ... and good it is.


def test_unwritable_checkpoint_root_is_a_clear_error(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  code, output = run(
    '--worker_mode=train', f'--checkpoint_root={blocker / "sub"}', '--max_steps=1', *TINY_RUN
  )
  support.assert_one_clear_error(code, output, 'Cannot write checkpoints', '--checkpoint_root')


def test_a_full_disk_stops_the_run_naming_the_folder_and_keeps_the_last_checkpoint(
  tmp_path, monkeypatch
):
  write = checkpointing.dill.dump

  def disk_full_from_step_3(checkpoint, file, protocol=None):
    if checkpoint['step'] >= 3:
      file.write(b'the first bytes')
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    write(checkpoint, file, protocol=protocol)

  monkeypatch.setattr(checkpointing.dill, 'dump', disk_full_from_step_3)
  code, output = train_checkpointing_every_step(tmp_path, max_steps=8)
  support.assert_one_clear_error(
    code, output, f'to {tmp_path} (No space left on device)', 'left as it was'
  )
  assert checkpoint_step(tmp_path) == 2  # Whole, and the run can resume from it.
  assert not [name for name in os.listdir(tmp_path) if name.endswith('.tmp')]


def test_an_input_position_that_cannot_be_written_stops_the_run(tmp_path, monkeypatch):
  def read_only(self, prefix):
    raise dataset.DatasetError(f'cannot write {prefix}: Read-only file system')

  monkeypatch.setattr(dataset.HostBatches, 'save', read_only)
  code, output = train_checkpointing_every_step(tmp_path, max_steps=8)
  folder = tmp_path / 'pretrain.pkl.input' / 'process_0_of_1'
  support.assert_one_clear_error(
    code, output, f'Cannot save the input position to {folder}', 'Read-only file system'
  )
  assert checkpoint_step(tmp_path) == 0  # The initial state's, written before the first position.


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """A folder where `--experiment_mode=pretrain` trained 2 steps of `TINY_RUN`."""
  root = tmp_path_factory.mktemp('pretrained')
  code, output = run(
    '--experiment_mode=pretrain',
    '--worker_mode=train',
    f'--checkpoint_root={root}',
    '--max_steps=2',
    *TINY_RUN,
  )
  assert code == 0, output
  return root


def copy_of(pretrained, tmp_path):
  """`tmp_path`, holding a copy of the `pretrained` folder (which the tests share)."""
  shutil.copytree(pretrained, tmp_path, dirs_exist_ok=True)
  return tmp_path


def test_linear_eval_trains_from_pretrain_checkpoint_and_eval_worker_reports_accuracy(
  pretrained, tmp_path
):
  flags = [f'--checkpoint_root={copy_of(pretrained, tmp_path)}', '--max_steps=2', *TINY_RUN]
  pretraining = json.loads((tmp_path / 'pretrain.config.json').read_text())
  assert pretraining['network_config']['encoder_class'] == 'TinyResNet'
  assert pretraining['dataset_config']['image_size'] == 32
  # The encoder and the image size come from pretrain.config.json: not repeated here (without
  # it, the mock ImageNet's defaults, ResNet-50 at 224 px, would not match the checkpoint).
  linear_flags = [flag for flag in flags if not flag.startswith(('--encoder=', '--image_size='))]
  code, output = run('--experiment_mode=linear-eval', '--worker_mode=train', *linear_flags)
  assert code == 0, output
  assert 'Loaded the pretrained encoder' in output
  assert checkpointing.load_checkpoint(str(tmp_path / 'linear-eval.pkl'))['step'] == 2
  linear_eval = json.loads((tmp_path / 'linear-eval.config.json').read_text())
  assert linear_eval['network_config']['encoder_class'] == 'TinyResNet'

  code, output = run('--experiment_mode=linear-eval', '--worker_mode=eval', *linear_flags)
  assert code == 0, output
  assert 'eval step 2' in output and 'top1_accuracy=' in output and 'top5_accuracy=' in output
  eval_log = [json.loads(line) for line in open(tmp_path / 'linear-eval_eval.jsonl')]
  assert eval_log[-1]['num_examples'] == support.MOCK_NUM_EXAMPLES


def test_a_flag_that_contradicts_the_pretraining_config_is_one_clear_error(tmp_path):
  pretraining = {'network_config': {'encoder_class': 'TinyResNet'}}
  (tmp_path / 'pretrain.config.json').write_text(json.dumps(pretraining))
  code, output = run(
    '--experiment_mode=linear-eval',
    '--worker_mode=train',
    f'--checkpoint_root={tmp_path}',
    '--encoder=ResNet18',
  )
  support.assert_one_clear_error(
    code, output, "--encoder gives network_config.encoder_class='ResNet18'", "used 'TinyResNet'"
  )
  assert os.listdir(tmp_path) == ['pretrain.config.json']


def test_unknown_override_key_is_a_clear_error(tmp_path):
  code, output = run(
    '--worker_mode=train',
    f'--checkpoint_root={tmp_path}',
    *TINY_RUN,
    '--override=optimizer_config.weight_dacay=0',
  )
  support.assert_one_clear_error(code, output, 'unknown key `weight_dacay`', 'weight_decay')


def test_random_encoder_baseline_by_override_computed_in_bfloat16(tmp_path):
  code, output = run(
    '--experiment_mode=linear-eval',
    '--worker_mode=train',
    f'--checkpoint_root={tmp_path}',
    '--max_steps=1',
    *TINY_RUN,
    '--override=allow_train_from_scratch=true',
    '--compute_dtype=bfloat16',
  )
  assert code == 0, output
  assert 'RANDOM encoder' in output
  checkpoint = checkpointing.load_checkpoint(str(tmp_path / 'linear-eval.pkl'))
  assert checkpoint['step'] == 1
  # bfloat16 is the compute dtype only: everything saved stays float32 (or integer).
  leaves = jax.tree.leaves(checkpoint['experiment_state'])
  assert {np.asarray(leaf).dtype for leaf in leaves} <= {np.dtype('float32'), np.dtype('int32')}
  assert all(np.all(np.isfinite(leaf)) for leaf in leaves)


def test_linear_eval_without_pretrain_checkpoint_is_a_clear_error(tmp_path):
  code, output = run(
    '--experiment_mode=linear-eval',
    '--worker_mode=train',
    f'--checkpoint_root={tmp_path}',
    '--max_steps=1',
    *TINY_RUN,
  )
  support.assert_one_clear_error(code, output, 'No pretraining checkpoint', 'Pretrain first')
  assert not (tmp_path / 'linear-eval.pkl').exists()


def test_linear_eval_refuses_a_pretrain_checkpoint_that_names_code_and_writes_nothing(tmp_path):
  marker = tmp_path.parent / f'{tmp_path.name}-pwned'
  (tmp_path / 'pretrain.pkl').write_bytes(
    pickle.dumps(
      {'experiment_state': support.RunsACommand(f'touch {marker}'), 'step': 0}, protocol=2
    )
  )
  code, output = run(
    '--experiment_mode=linear-eval',
    '--worker_mode=train',
    f'--checkpoint_root={tmp_path}',
    '--max_steps=1',
    *TINY_RUN,
  )
  support.assert_one_clear_error(code, output, 'Refusing to load', 'names `posix.system`')
  assert not marker.exists()
  assert os.listdir(tmp_path) == ['pretrain.pkl']


def test_paper_protocol_chooses_on_valid_and_reports_only_the_chosen_run_on_test(
  pretrained, tmp_path
):
  flags = [f'--checkpoint_root={copy_of(pretrained, tmp_path)}', '--max_steps=1', *TINY_RUN]
  code, output = run(
    '--experiment_mode=linear-eval', '--worker_mode=train', '--base_learning_rates=0.4,0.1', *flags
  )
  assert code == 0, output

  table = json.load(open(tmp_path / 'linear-eval-sweep.json'))
  runs = table['runs']
  assert [entry['base_learning_rate'] for entry in runs] == [0.1, 0.4]
  best = max(runs, key=lambda entry: entry['valid']['top1_accuracy'])
  assert table['chosen_base_learning_rate'] == best['base_learning_rate']
  for entry in runs:
    assert os.path.exists(entry['checkpoint'])
    assert (
      entry['valid']['num_examples'] == support.MOCK_NUM_EXAMPLES // 10
    )  # VALID: a tenth of train.
    assert (entry['test'] is None) == (entry is not best)
  assert best['test']['num_examples'] == support.MOCK_NUM_EXAMPLES
  assert f'chose base learning rate {best["base_learning_rate"]:g} on VALID' in output


def test_fine_tuning_on_1_percent_of_the_labels_trains_evaluates_and_sweeps(tmp_path):
  flags = [
    '--dataset=synthetic',
    '--experiment_mode=fine-tune',
    '--label_fraction=0.01',
    f'--checkpoint_root={tmp_path}',
    '--max_steps=2',
    '--override=allow_train_from_scratch=true',
    *TINY_RUN,
    '--eval_batch_size=100',  # 1,500 synthetic images to evaluate: in larger batches.
  ]
  code, output = run('--worker_mode=train', *flags)
  assert code == 0, output
  config = json.loads((tmp_path / 'fine-tune.config.json').read_text())
  assert config['freeze_backbone'] is False and config['dataset_config']['label_fraction'] == 0.01
  # 1% of each class of the synthetic set's 5,000 training images: 5 of each of 10 classes.
  recorded = json.loads((tmp_path / 'fine-tune.labels.json').read_text())
  assert recorded['split'] == 'train_and_valid' and recorded['num_examples'] == 50
  assert recorded['examples_per_class'] == {str(label): 5 for label in range(10)}

  code, output = run('--worker_mode=eval', *flags)
  assert code == 0, output
  assert 'kNN bank of 50 training images' in output  # The labelled ones only.
  last = (tmp_path / 'fine-tune_eval.jsonl').read_text().splitlines()[-1]
  assert json.loads(last)['num_examples'] == 1000

  # The paper's protocol: trained on TRAIN (VALID, the first 500 images, is held out).
  code, output = run('--worker_mode=train', '--base_learning_rates=0.05', *flags)
  assert code == 0, output
  table = json.loads((tmp_path / 'fine-tune-sweep.json').read_text())
  assert table['runs'][0]['valid']['num_examples'] == 500
  assert table['runs'][0]['test']['num_examples'] == 1000
  subset = json.loads((tmp_path / 'fine-tune-sweep/lr_0.05/fine-tune.labels.json').read_text())
  assert subset['split'] == 'train' and min(subset['positions']) >= 500
  # The 4,500 TRAIN images hold about 450 of each class: 1% is 4 or 5 (rounded) of each.
  counts = subset['examples_per_class']
  assert len(subset['positions']) == sum(counts.values())
  assert len(counts) == 10 and set(counts.values()) <= {4, 5}


# Imagenette's evaluation has the kNN monitor, with a bank of 20 training images per class (read
# from the start of the shuffled listing: a few hundred images, not all 9469).
@pytest.mark.parametrize(
  'name, num_test_examples, knn', [('imagenette', 3925, True), ('cifar10', 10000, False)]
)
def test_real_image_folder_pretrains_and_evaluates_every_test_image(
  tmp_path, real_folders, name, num_test_examples, knn
):
  knn_bank = 'evaluation_config.knn.bank_per_class=20' if knn else 'evaluation_config.knn.k=0'
  flags = [
    f'--override={knn_bank}',
    f'--dataset={real_folders[name]}',
    f'--checkpoint_root={tmp_path}',
    '--max_steps=2',
    '--encoder=TinyResNet',
    '--image_size=32',
    '--batch_size=16',
    '--eval_batch_size=500',
    '--log_tensors_interval=0',
    '--eval_poll_interval=0.2',
  ]
  code, output = support.run_main_loop('--worker_mode=train', *flags)
  assert code == 0, output
  state = checkpointing.load_checkpoint(str(tmp_path / 'pretrain.pkl'))['experiment_state']
  assert state.online_params['classifier']['w'].shape[-1] == 10  # Classes read from the folders.
  code, output = support.run_main_loop('--worker_mode=eval', *flags)
  assert code == 0, output
  eval_log = [json.loads(line) for line in open(tmp_path / 'pretrain_eval.jsonl')]
  assert eval_log[-1]['num_examples'] == num_test_examples
  assert ('knn_top1_accuracy' in eval_log[-1]) == knn
  assert ('kNN bank of 200 training images (20 to 20 per class)' in output) == knn


def test_bad_datasets_are_one_clear_message(tmp_path):
  (tmp_path / 'empty' / 'train').mkdir(parents=True)
  (tmp_path / 'empty' / 'val').mkdir()
  code, output = support.run_main_loop(
    '--worker_mode=train', f'--dataset=folder:{tmp_path / "empty"}', f'--checkpoint_root={tmp_path}'
  )
  support.assert_one_clear_error(code, output, 'has no class sub-folders')
  code, output = support.run_main_loop(
    '--worker_mode=train', '--dataset=imagenet2013', f'--checkpoint_root={tmp_path}'
  )
  support.assert_one_clear_error(code, output, "no dataset named 'imagenet2013'", 'folder:PATH')
  code, output = support.run_main_loop(
    '--worker_mode=train',
    '--dataset=synthetic',
    '--batch_size=8192',
    f'--checkpoint_root={tmp_path}',
    '--encoder=TinyResNet',
    '--max_steps=1',
  )
  support.assert_one_clear_error(code, output, 'fewer than one batch of 8192', '--batch_size')


def test_quick_start_reports_byol_against_a_random_encoder(tmp_path, capsys):
  # An entry linear evaluation inherits (it must reach the linear evaluations): the preset's encoder
  # at a quarter of its width, for speed.
  encoder = 'network_config.encoder_config.width_multiplier=1'
  last_line = quickstart.run(
    str(tmp_path),
    pretrain_steps=2,
    linear_eval_steps=2,
    batch_size=16,
    overrides=['base_target_ema=0.9', encoder],
    log_interval=0,
  )
  printed = capsys.readouterr().out
  assert printed.strip().splitlines()[-1] == last_line
  curves = tmp_path / 'byol' / 'pretrain_curves.png'
  assert f'Curves of the BYOL pretraining: {curves}\n' in printed and curves.exists()
  # Each stage prints the command that runs it alone.
  assert (
    f'$ python -m byol.main_loop --dataset=synthetic --experiment_mode=linear-eval '
    f'--checkpoint_root={tmp_path / "random"} --max_steps=2 --batch_size=16 '
    f'--override={encoder} --override=allow_train_from_scratch=true --worker_mode=eval'
  ) in printed
  # The pretraining took every override; the linear evaluations the encoder's (not tau's).
  assert '--override=base_target_ema=0.9 --override=' + encoder in printed
  assert printed.count('--override=base_target_ema') == 2  # The train and eval workers.
  assert re.fullmatch(
    r'Top-1 on the synthetic test split, BYOL vs random encoder: kNN \d+\.\d% vs \d+\.\d%, '
    r'linear \d+\.\d% vs \d+\.\d% \(\d+\.\d min\)\.',
    last_line,
  ), last_line
  for folder in ('byol', 'random'):
    evaluation = json.loads(open(tmp_path / folder / 'linear-eval_eval.jsonl').readlines()[-1])
    assert evaluation['num_examples'] == 1000
  # The pretraining's eval worker, a process of its own beside the train worker, scored the final
  # checkpoint for the curve.
  pretraining = [json.loads(line) for line in open(tmp_path / 'byol' / 'pretrain_eval.jsonl')]
  assert pretraining[-1]['step'] == 2 and 'knn_top1_accuracy' in pretraining[-1]
  eval_worker_log = (tmp_path / 'byol' / 'eval_worker.log').read_text()
  assert 'Evaluated the final step 2; done.' in eval_worker_log
  # A `python -m byol.main_loop` process of its own: TensorFlow's C++ start-up notices held back.
  assert 'oneDNN' not in eval_worker_log and 'absl::InitializeLog' not in eval_worker_log


def test_quick_start_command_line_takes_its_flags(monkeypatch):
  calls = []
  monkeypatch.setattr(quickstart, 'run', lambda *args, **kwargs: calls.append((args, kwargs)))
  support.run_program(
    quickstart,
    monkeypatch,
    '--checkpoint_root=/somewhere',
    '--dataset=folder:/data',
    '--pretrain_steps=7',
    '--batch_size=4',
    '--override=base_target_ema=0.99',
  )
  assert calls == [
    (
      ('/somewhere',),
      dict(
        dataset_name='folder:/data',
        pretrain_steps=7,
        linear_eval_steps=300,
        batch_size=4,
        overrides=['base_target_ema=0.99'],
        save_interval=60,
        log_interval=20,
      ),
    )
  ]
  with pytest.raises(absl_flags.IllegalFlagValueError, match='pretrain_steps'):
    support.run_program(quickstart, monkeypatch, '--pretrain_steps=0')
