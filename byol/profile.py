r"""Where the pretraining update's time goes: its XLA operations, timed one by one.

  python -m byol.profile --encoder=ResNet18 --image_size=128 --batch_size=32 --steps=3

Runs the update of `byol.benchmark` (random batch on the device, augmentations inside) under
`jax.profiler`, which records every XLA operation (a thunk of the compiled program: a convolution,
a matrix product, a fusion of element-wise ops, a copy) with its start and end, and prints the
operations that take the most time, with

- their time in flight per step, from their start to their end, and its share of the sum over
  all operations. XLA:CPU runs independent operations at once (as many as there are cores, more
  queued), so that sum exceeds the step's wall time; a convolution (XNNPACK, `ynn_fusion`) runs on
  one thread from start to end, while an element-wise fusion or a copy is split into tasks for the
  thread pool and its time includes waiting for a free thread: its share is an upper bound,
- what they are: a convolution's role (forward, input gradient, weight gradient: see
  `operations`), a matrix product, or a fusion with the largest operation it holds,
- their output and operand shapes, from the compiled program's text,
- their achieved GFLOP/s, for the convolutions and matrix products (2 * output elements * the
  length of the reduction), a fusion counting the convolutions and products it holds.

Then the time by kind of operation. `--output` writes every operation's figures as JSON. The
`--cpu_kernels` switch is that of `byol.benchmark`.
"""

import dataclasses
import glob
import gzip
import json
import math
import os
import re
import tempfile
import time
from typing import Any, Iterable, Sequence

from absl import app
from absl import flags
import jax
import numpy as np

from byol import benchmark
from byol.configs import datasets
from byol.utils import console
from byol.utils import cpu_kernels
from byol.utils import input_spec
from byol.utils import networks

FLAGS = flags.FLAGS

# `%name = f32[32,64,64,64]{3,2,1,0} opcode(%operand, ...), attributes`: an instruction of HLO text.
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%(\S+) = (.+?) ([a-z][\w-]*)\((.*)$')
# `%fused_computation.3 (param_0.1: f32[8,3], ...) -> f32[8,3] {`: a computation's first line.
_COMPUTATION = re.compile(r'^(?:ENTRY )?%(\S+) \((.*)\) -> .*\{$')
_PARAMETER = re.compile(r'([\w.-]+): ([a-z]+\d*\[[\d,]*\])')
_DIMS = re.compile(r'^[a-z]+\d*\[([\d,]*)\]')


@dataclasses.dataclass
class Operation:
  """One instruction of the compiled update, as the profile and the program's text describe it."""

  name: str
  opcode: str
  shapes: str  # 'output <- operand, operand'.
  kind: str  # 'conv forward', 'conv input gradient', 'dot', 'fusion (conv weight gradient)', ...
  flops: float  # Of the convolutions and matrix products it is or holds; 0 for the others.
  seconds: float = 0.0  # Per step.


@dataclasses.dataclass
class _Instruction:
  computation: str
  name: str
  shape: str  # 'f32[8,16,16,64]'; a tuple's text as written.
  opcode: str
  operands: list[str]  # Names.
  line: str


def _dims(shape: str) -> list[int] | None:
  """The dimensions of an array shape ('f32[2,3]' -> [2, 3]); None for a tuple or a token."""
  match = _DIMS.match(shape)
  return [int(d) for d in match.group(1).split(',') if d] if match else None


def _parse(hlo_text: str) -> tuple[list[_Instruction], dict[str, str]]:
  """The instructions of a program's text, and the shape of every instruction and parameter."""
  instructions, shapes, computation = [], {}, ''
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      computation = header.group(1)
      shapes.update(_PARAMETER.findall(header.group(2)))
      continue
    match = _INSTRUCTION.match(line)
    if match:
      name, shape, opcode, rest = match.groups()
      shape = shape.split('{')[0]  # Without the layout.
      operands = re.findall(r'%([\w.-]+)', rest.split(')')[0])
      instructions.append(_Instruction(computation, name, shape, opcode, operands, line))
      shapes[name] = shape
  return instructions, shapes


def _op_name(line: str) -> str:
  """The JAX operation an instruction was lowered from (its metadata's op_name)."""
  match = re.search(r'op_name="([^"]*)"', line)
  return match.group(1) if match else ''


def _conv_flops(output: list[int], kernel: list[int], line: str) -> float:
  """2 * output elements * window * input features per output (the kernel's 'i' dimension),
  without the products with the zeros of a dilated input (`lhs_dilate`: the input gradient of a
  strided convolution), which are none of the model's arithmetic."""
  kernel_labels = re.search(r'dim_labels=\w+_(\w+)->', line).group(1)
  window = re.search(r'window=\{size=([\dx]+)', line)
  window_size = math.prod(int(s) for s in window.group(1).split('x')) if window else 1
  dilation = re.search(r'lhs_dilate=([\dx]+)', line)
  zeros = math.prod(int(s) for s in dilation.group(1).split('x')) if dilation else 1
  return 2.0 * math.prod(output) * window_size * kernel[kernel_labels.index('i')] / zeros


def _dot_flops(output: list[int], lhs: list[int], line: str) -> float:
  """2 * output elements * the product of the first operand's contracting dimensions."""
  contracting = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', line)
  dims = [int(d) for d in contracting.group(1).split(',') if d] if contracting else []
  return 2.0 * math.prod(output) * math.prod(lhs[d] for d in dims)


def operations(hlo_text: str, kernel_shapes: Iterable[Sequence[int]]) -> dict[str, Operation]:
  """The operations of a compiled program's text (the instructions outside fusions), by name,
  with their kind, shapes and FLOPs.

  `kernel_shapes`: the shapes of the network's convolution kernels. A convolution whose output
  holds a kernel (the same dimensions in any order: XLA may permute them) and whose second operand
  does not is a 'conv weight gradient'; the others are 'conv input gradient' where the JAX
  operation they come from is transposed (the backward pass), else 'conv forward'. A fusion takes
  the FLOPs of the convolutions and matrix products it calls, and its kind names the largest of
  them ('fusion (conv forward)'), or is 'fusion' if it holds none.
  """
  instructions, shapes = _parse(hlo_text)
  kernels = {tuple(sorted(shape)) for shape in kernel_shapes}
  held: dict[str, list[tuple[float, str]]] = {}  # (FLOPs, kind) by computation.
  found: dict[str, Operation] = {}
  for i in instructions:
    output = _dims(i.shape) or []
    operands = [_dims(shapes.get(name, '')) or [] for name in i.operands]
    flops, kind = 0.0, i.opcode
    if i.opcode == 'convolution' and len(operands) == 2:
      flops = _conv_flops(output, operands[1], i.line)
      if tuple(sorted(output)) in kernels and tuple(sorted(operands[1])) not in kernels:
        kind = 'conv weight gradient'
      elif 'transpose(' in _op_name(i.line):
        kind = 'conv input gradient'
      else:
        kind = 'conv forward'
    elif i.opcode == 'dot' and operands:
      flops, kind = _dot_flops(output, operands[0], i.line), 'dot'
    if flops:
      held.setdefault(i.computation, []).append((flops, kind))
    text = f'{i.shape} <- ' + ', '.join(shapes.get(name, '?') for name in i.operands)
    found[i.name] = Operation(i.name, i.opcode, text, kind, flops)
  fused = set()  # The computations of fusions: their instructions run inside the fusion's.
  for i in instructions:
    called = re.search(r'calls=%([\w.-]+)', i.line)
    if called and i.opcode == 'fusion':
      fused.add(called.group(1))
      inside = held.get(called.group(1))
      if inside:
        found[i.name].flops = sum(flops for flops, _ in inside)
        found[i.name].kind = f'fusion ({max(inside)[1]})'
  return {i.name: found[i.name] for i in instructions if i.computation not in fused}


def _events(trace_folder: str) -> list[dict[str, Any]]:
  """The complete ('X') events of the Perfetto trace that `jax.profiler.trace` wrote."""
  (path,) = glob.glob(os.path.join(trace_folder, '**', 'perfetto_trace.json.gz'), recursive=True)
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  return [event for event in events if event.get('ph') == 'X']


def operation_seconds(events: list[dict[str, Any]], module: str) -> dict[str, float]:
  """Seconds per operation of `module`, summed over the trace.

  XLA:CPU marks an operation's start with an event named after it (`args.hlo_op`) and its end with
  one named 'end: <operation>' (on whichever thread finished it); an operation's time runs from
  the one to the other.
  """
  ends: dict[str, list[float]] = {}
  for event in events:
    if event['name'].startswith('end: '):
      ends.setdefault(event['name'][5:], []).append(event['ts'] + event['dur'])
  for times in ends.values():
    times.sort()
  seconds: dict[str, float] = {}
  starts = sorted(
    (event for event in events if event.get('args', {}).get('hlo_module') == module),
    key=lambda event: event['ts'],
  )
  for event in starts:
    name = event['args']['hlo_op']
    finished = [t for t in ends.get(name, []) if t >= event['ts']]
    end = finished[0] if finished else event['ts'] + event['dur']
    if finished:
      ends[name].remove(end)
    seconds[name] = seconds.get(name, 0.0) + (end - event['ts']) / 1e6  # Microseconds.
  return seconds


def profile(
  encoder: str, image_size: int, batch_size: int, steps: int, cpu_kernels_setting: str = 'auto'
) -> tuple[list[Operation], float]:
  """The pretraining update's operations with their seconds per step (slowest first), and the
  wall-clock seconds of a step while profiled."""
  dataset = datasets.IMAGENET
  experiment = benchmark.pretraining(
    encoder, dataset, image_size, batch_size, cpu_kernels_setting=cpu_kernels_setting
  )
  inputs = benchmark.random_batch(
    input_spec.PreprocessMode.PRETRAIN,
    batch_size=batch_size,
    image_size=image_size,
    num_classes=dataset.num_classes,
    sharding=experiment.batch_sharding,
    seed=1,
  )
  arguments = (experiment.state, inputs, jax.random.key(1), np.int32(0))
  compiled = experiment.update.lower(*arguments).compile()
  kernels = [
    leaf.shape for leaf in jax.tree.leaves(experiment.state.online_params) if leaf.ndim == 4
  ]
  found = operations(compiled.as_text(), kernels)
  module = re.search(r'HloModule (\S+?),', compiled.as_text()).group(1)
  state = jax.tree.map(jax.numpy.copy, experiment.state)
  state, logs = compiled(state, *arguments[1:])  # Warm: buffers allocated, threads started.
  jax.block_until_ready(logs)
  with tempfile.TemporaryDirectory() as folder:
    start = time.perf_counter()
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      for step in range(steps):
        state, logs = compiled(state, inputs, jax.random.key(1), np.int32(step))
        jax.block_until_ready(logs)
    wall = (time.perf_counter() - start) / steps
    seconds = operation_seconds(_events(folder), module)
  for name, total in seconds.items():
    if name in found:
      found[name].seconds = total / steps
  timed = sorted((op for op in found.values() if op.seconds), key=lambda op: -op.seconds)
  return timed, wall


def by_kind(timed: list[Operation]) -> list[tuple[str, float, float]]:
  """(kind, seconds per step, FLOPs per step) summed over the operations of each kind, slowest
  first; the fusions that hold a convolution or a product count with it."""
  totals: dict[str, list[float]] = {}
  for op in timed:
    kind = op.kind.removeprefix('fusion (').removesuffix(')') if op.flops else op.kind
    total = totals.setdefault(kind, [0.0, 0.0])
    total[0] += op.seconds
    total[1] += op.flops
  return sorted(((k, s, f) for k, (s, f) in totals.items()), key=lambda row: -row[1])


def main(argv: list[str]) -> None:
  del argv
  console.use_clean_lines()
  timed, wall = profile(
    FLAGS.encoder, FLAGS.image_size, FLAGS.batch_size, FLAGS.steps, FLAGS.cpu_kernels
  )
  total = sum(op.seconds for op in timed)
  print(
    f'Pretrain update, {FLAGS.encoder} {FLAGS.image_size}px batch {FLAGS.batch_size}: '
    f'{1e3 * wall:.0f} ms a step (profiled), {1e3 * total:.0f} ms of operations, '
    f'{len(timed)} operations.'
  )
  print(f'{"operation":<28} {"kind":<34} {"ms":>7} {"share":>6} {"GFLOP/s":>8}  shapes')
  for op in timed[: FLAGS.top]:
    rate = f'{op.flops / op.seconds / 1e9:8.1f}' if op.flops else f'{"":>8}'
    print(
      f'{op.name[:28]:<28} {op.kind[:34]:<34} {1e3 * op.seconds:7.1f} '
      f'{100 * op.seconds / total:5.1f}% {rate}  {op.shapes}'
    )
  print('By kind:')
  for kind, seconds, flops in by_kind(timed):
    rate = f'{flops / seconds / 1e9:8.1f} GFLOP/s' if flops else ''
    print(f'  {kind:<34} {1e3 * seconds:8.1f} ms {100 * seconds / total:5.1f}% {rate}')
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      json.dump(
        dict(
          encoder=FLAGS.encoder,
          image_size=FLAGS.image_size,
          batch_size=FLAGS.batch_size,
          step_ms=1e3 * wall,
          operations=[dataclasses.asdict(op) for op in timed],
        ),
        f,
        indent=2,
      )


if __name__ == '__main__':
  flags.DEFINE_enum('encoder', 'ResNet18', sorted(networks.ENCODERS), 'Encoder to profile.')
  flags.DEFINE_integer('image_size', 128, 'Side of the input images.', lower_bound=8)
  flags.DEFINE_integer('batch_size', 32, 'Total batch size.', lower_bound=1)
  flags.DEFINE_integer('steps', 3, 'Profiled steps (after one warm-up step).', lower_bound=1)
  flags.DEFINE_integer('top', 15, 'Operations listed, slowest first.', lower_bound=1)
  flags.DEFINE_enum('cpu_kernels', 'auto', list(cpu_kernels.SWITCH_VALUES), 'As in byol.benchmark.')
  flags.DEFINE_string('output', None, 'Where to write every operation as JSON.')
  app.run(main)
