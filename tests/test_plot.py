"""`python -m byol.plot`: the curves drawn are the scalars the workers logged."""

import json

from absl import flags as absl_flags
import pytest

from byol import plot
import support  # This folder is on the path.

TRAIN = [
  dict(
    step=1,
    loss=4.0,
    repr_loss=3.0,
    classif_loss=1.0,
    top1_accuracy=0.1,
    learning_rate=0.1,
    tau=0.99,
    embedding_zero_fraction=0.5,
  ),
  dict(
    step=2,
    loss=3.5,
    repr_loss=2.7,
    classif_loss=0.8,
    top1_accuracy=0.2,
    learning_rate=0.2,
    tau=0.995,
    embedding_zero_fraction=0.75,
  ),
]
EVAL = [
  dict(step=1, loss=2.0, top1_accuracy=0.15, knn_top1_accuracy=0.3, num_examples=1000),
  dict(step=2, loss=1.9, top1_accuracy=0.25, knn_top1_accuracy=0.4, num_examples=1000),
]


def write_logs(folder, mode, train, evaluations, unfinished_line=''):
  for worker, rows in (('train', train), ('eval', evaluations)):
    text = ''.join(json.dumps(row) + '\n' for row in rows)
    (folder / f'{mode}_{worker}.jsonl').write_text(
      text + (unfinished_line if worker == 'eval' else '')
    )


def curves(figure):
  """{(panel title, curve label): (steps, values)} of a drawn figure."""
  return {
    (axis.get_title(), line.get_label()): (list(line.get_xdata()), list(line.get_ydata()))
    for axis in figure.axes
    for line in axis.get_lines()
  }


def test_each_logged_scalar_is_drawn_against_its_steps(tmp_path):
  # The eval worker was killed while writing its third line: that line is left out.
  write_logs(tmp_path, 'pretrain', TRAIN, EVAL, unfinished_line='{"step": 3, "top1_acc')
  path = plot.plot(str(tmp_path))
  assert path == str(tmp_path / 'pretrain_curves.png')
  assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'

  drawn = curves(
    plot.draw(
      {
        'train': plot.read_scalars(str(tmp_path / 'pretrain_train.jsonl')),
        'eval': plot.read_scalars(str(tmp_path / 'pretrain_eval.jsonl')),
      },
      'title',
    )
  )
  assert drawn[('top-1 accuracy', 'test kNN')] == ([1, 2], [0.3, 0.4])
  assert drawn[('top-1 accuracy', 'test (online classifier)')] == ([1, 2], [0.15, 0.25])
  assert drawn[('top-1 accuracy', 'train batch (online classifier)')] == ([1, 2], [0.1, 0.2])
  assert drawn[('target EMA rate tau', 'tau')] == ([1, 2], [0.99, 0.995])
  assert drawn[('embedding entries at 0', 'online encoder, both views (1: dead)')] == (
    [1, 2],
    [0.5, 0.75],
  )
  assert drawn[('learning rate', 'learning rate')] == ([1, 2], [0.1, 0.2])
  assert drawn[('loss', 'train BYOL loss')] == ([1, 2], [3.0, 2.7])
  assert drawn[('loss', 'test classifier loss')] == ([1, 2], [2.0, 1.9])
  assert len(drawn) == 10


def test_a_linear_evaluation_has_no_tau_or_knn_panel(tmp_path):
  pretraining_only = ('tau', 'repr_loss', 'embedding_zero_fraction')
  train = [{k: v for k, v in row.items() if k not in pretraining_only} for row in TRAIN]
  evaluations = [{k: v for k, v in row.items() if k != 'knn_top1_accuracy'} for row in EVAL]
  write_logs(tmp_path, 'linear-eval', train, evaluations)
  output = tmp_path / 'out.png'
  assert plot.plot(str(tmp_path), 'linear-eval', str(output)) == str(output)
  figure = plot.draw({'train': train, 'eval': evaluations}, 'title')
  assert [axis.get_title() for axis in figure.axes] == ['loss', 'learning rate', 'top-1 accuracy']


def test_a_corrupt_line_is_named(tmp_path):
  (tmp_path / 'pretrain_train.jsonl').write_text(
    '{"step": 1, "loss": 2.0}\nnot json\n{"step": 2}\n'
  )
  with pytest.raises(ValueError, match=r'pretrain_train.jsonl, line 2, is not a JSON object'):
    plot.plot(str(tmp_path))


def test_command_line_writes_the_png_or_says_where_it_found_no_logs(tmp_path, monkeypatch, capsys):
  def run(*argv):
    support.run_program(plot, monkeypatch, *argv)

  with pytest.raises(SystemExit, match='error: No pretrain_train.jsonl or pretrain_eval.jsonl'):
    run(f'--checkpoint_root={tmp_path}')
  write_logs(tmp_path, 'pretrain', TRAIN, EVAL)
  run(f'--checkpoint_root={tmp_path}')
  assert capsys.readouterr().out == f'Wrote {tmp_path / "pretrain_curves.png"}.\n'
  with pytest.raises(absl_flags.IllegalFlagValueError):
    run(f'--checkpoint_root={tmp_path}', '--experiment_mode=finetune')
