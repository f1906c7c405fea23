#!/usr/bin/env bash
# The accelerator check of issue 17, for a host with JAX (CUDA or TPU), dm-haiku, optax, dill and
# pytest, no TensorFlow needed: the BYOL pretraining update of ResNet-50 at 224 px in bfloat16 and
# float32 at two batch sizes (`python -m byol.benchmark`, input rows skipped without TensorFlow),
# then the tests that need JAX alone, on that accelerator. About 10 minutes on one H200.
#
#   bash tools/gpu_benchmark.sh [OUTPUT_DIR]          # default: ./gpu_benchmark
#
# Writes OUTPUT_DIR/gpu_benchmark.json (every benchmark row, the tests' outcome: null if they did
# not finish) and each run's printed table and log beside it. ENCODER, IMAGE_SIZE, BATCH_SIZES and STEPS change the runs (e.g. a quick check on a
# CPU: ENCODER=TinyResNet IMAGE_SIZE=32 BATCH_SIZES="8 16" STEPS=1).
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-gpu_benchmark}")
mkdir -p "$out"
encoder=${ENCODER:-ResNet50}
image_size=${IMAGE_SIZE:-224}
batch_sizes=${BATCH_SIZES:-256 512}
steps=${STEPS:-10}
python=${PYTHON:-python3}

for dtype in bfloat16 float32; do
  for batch in $batch_sizes; do
    name="${encoder}_${image_size}px_${dtype}_batch${batch}"
    echo "== $name"
    timeout 300 "$python" -m byol.benchmark --encoder="$encoder" --image_size="$image_size" \
      --batch_size="$batch" --compute_dtype="$dtype" --steps="$steps" \
      --output="$out/$name.json" 2>"$out/$name.log" | tee "$out/$name.txt" \
      || echo "   failed: see $out/$name.log"
  done
done

# The tests whose modules import JAX and the package alone (no TensorFlow, no test helpers, so no
# conftest), in full float32 precision: the tolerances are those of the CPU suite.
echo "== tests"
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 360 "$python" -m pytest -q --noconftest \
  -p no:cacheprovider --junitxml="$out/tests.xml" tests/test_networks.py tests/test_optimizers.py \
  tests/test_schedules.py tests/test_augmentations.py tests/test_helpers.py 2>&1 | tail -n 15

"$python" - "$out" <<'PY'
import glob, json, os, sys
import xml.etree.ElementTree as ElementTree

out = sys.argv[1]
runs = {}
for path in sorted(glob.glob(os.path.join(out, '*px_*.json'))):
  with open(path) as f:
    runs[os.path.basename(path)[: -len('.json')]] = json.load(f)
tests = None
if os.path.exists(os.path.join(out, 'tests.xml')):
  suite = ElementTree.parse(os.path.join(out, 'tests.xml')).getroot().find('testsuite')
  tests = {key: int(suite.get(key, 0)) for key in ('tests', 'failures', 'errors', 'skipped')}
with open(os.path.join(out, 'gpu_benchmark.json'), 'w') as f:
  json.dump(dict(runs=runs, tests=tests), f, indent=2)
for name, run in runs.items():
  update = next(row for row in run['rows'] if row['what'].startswith('pretrain update'))
  print(f"{name}: {update['images_per_s']:.0f} images/s, {update['gflop_per_s']:.0f} GFLOP/s")
print('tests:', tests)
PY
