r"""Draws a run's curves from the JSON lines its workers wrote, into one PNG.

  python -m byol.plot --checkpoint_root=/tmp/byol
  python -m byol.plot --checkpoint_root=/tmp/byol --experiment_mode=linear-eval --output=curves.png

Reads `<checkpoint_root>/<mode>_train.jsonl` and `<mode>_eval.jsonl` (`byol.utils.summaries`) and
draws four panels against the training step: the losses, the learning rate, the target EMA rate
tau (pretraining), and the accuracies (the train worker's batch top-1, the eval worker's test
top-1 and, in pretraining, kNN top-1). A worker still running, or killed while writing, is fine:
an unfinished last line is left out.
"""

import json
import os
from typing import Any, Sequence

from absl import app
from absl import flags

FLAGS = flags.FLAGS

Scalars = list[dict[str, Any]]

# (panel title, [(worker, scalar, label)]): what each panel draws, when the logs hold it.
_PANELS = (
  (
    'loss',
    [
      ('train', 'loss', 'train loss'),
      ('train', 'repr_loss', 'train BYOL loss'),
      ('train', 'classif_loss', 'train classifier loss'),
      ('eval', 'loss', 'test classifier loss'),
    ],
  ),
  ('learning rate', [('train', 'learning_rate', 'learning rate')]),
  ('target EMA rate tau', [('train', 'tau', 'tau')]),
  (
    'embedding entries at 0',
    [('train', 'embedding_zero_fraction', 'online encoder, both views (1: dead)')],
  ),
  (
    'top-1 accuracy',
    [
      ('train', 'top1_accuracy', 'train batch (online classifier)'),
      ('eval', 'top1_accuracy', 'test (online classifier)'),
      ('eval', 'knn_top1_accuracy', 'test kNN'),
    ],
  ),
)


def read_scalars(path: str) -> Scalars:
  """The JSON objects of a `.jsonl` file, one per line; an unfinished last line is skipped."""
  rows = []
  with open(path) as f:
    for number, line in enumerate(f, start=1):
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        if line.endswith('\n'):
          raise ValueError(f'{path}, line {number}, is not a JSON object: {line[:80]!r}') from None
        # The last line, its write cut short: skipped.
  return rows


def draw(logs: dict[str, Scalars], title: str) -> Any:
  """A matplotlib Figure of the `_PANELS` that `logs` ({'train': rows, 'eval': rows}) can fill."""
  import matplotlib  # Imported here: only this program needs it.

  matplotlib.use('Agg')  # Files only; no display needed.
  from matplotlib import pyplot as plt

  panels = []
  for panel_title, curves in _PANELS:
    present = [
      (worker, name, label)
      for worker, name, label in curves
      if any(name in row for row in logs.get(worker, []))
    ]
    if present:
      panels.append((panel_title, present))
  if not panels:
    names = sorted({name for _, curves in _PANELS for _, name, _ in curves})
    raise ValueError(f'The logs hold none of the scalars drawn here ({", ".join(names)}).')
  figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
  for axis, (panel_title, curves) in zip(axes[0], panels):
    for worker, name, label in curves:
      rows = [row for row in logs[worker] if name in row]
      marker = 'o' if worker == 'eval' else None  # Evaluations are few: show each.
      axis.plot(
        [row['step'] for row in rows], [row[name] for row in rows], marker=marker, label=label
      )
    axis.set_title(panel_title)
    axis.set_xlabel('step')
    axis.grid(alpha=0.3)
    if len(curves) > 1:
      axis.legend(fontsize='small')
  figure.suptitle(title)
  figure.tight_layout()
  return figure


def plot(checkpoint_root: str, experiment_mode: str = 'pretrain', output: str | None = None) -> str:
  """Draws the curves of the run in `checkpoint_root` to `output`; returns the PNG's path.

  `output` defaults to `<checkpoint_root>/<experiment_mode>_curves.png`.

  Raises:
    FileNotFoundError: neither worker of `experiment_mode` has written a log there.
  """
  logs = {}
  for worker in ('train', 'eval'):
    path = os.path.join(checkpoint_root, f'{experiment_mode}_{worker}.jsonl')
    if os.path.exists(path):
      logs[worker] = read_scalars(path)
  if not any(logs.values()):
    raise FileNotFoundError(
      f'No {experiment_mode}_train.jsonl or {experiment_mode}_eval.jsonl with scalars in '
      f'{checkpoint_root}: point --checkpoint_root at the folder a run of '
      f'--experiment_mode={experiment_mode} wrote.'
    )
  output = output or os.path.join(checkpoint_root, f'{experiment_mode}_curves.png')
  figure = draw(logs, f'{experiment_mode}: {checkpoint_root}')
  figure.savefig(output, dpi=100)
  return output


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """The program's flags, defined when it runs as a program only."""
  flags.DEFINE_string(
    'checkpoint_root', None, 'Folder of the run.', required=True, flag_values=flag_values
  )
  flags.DEFINE_enum(
    'experiment_mode',
    'pretrain',
    ['pretrain', 'linear-eval', 'fine-tune'],
    'Which run in the folder to draw.',
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    'output',
    None,
    'The PNG to write (default: <checkpoint_root>/<experiment_mode>_curves.png).',
    flag_values=flag_values,
  )


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  try:
    path = plot(FLAGS.checkpoint_root, FLAGS.experiment_mode, FLAGS.output)
  except (FileNotFoundError, ValueError) as error:
    raise SystemExit(f'error: {error}') from None
  print(f'Wrote {path}.')


if __name__ == '__main__':
  define_flags()
  app.run(main)
