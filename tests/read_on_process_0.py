"""One of two processes on 127.0.0.1 that read a checkpoint only process 0 has.

  python tests/read_on_process_0.py PORT PROCESS_ID OUTPUT.json

Run from two different folders, each process sees its own `pretrain.pkl` (process 1: none), as two
hosts without a shared file system would. Writes what this process read.
"""

import json
import sys

port, process_id, output = sys.argv[1], int(sys.argv[2]), sys.argv[3]

import jax  # noqa: E402
import numpy as np  # noqa: E402

from byol.utils import checkpointing  # noqa: E402
from byol.utils import distributed  # noqa: E402


def main() -> None:
  distributed.initialize(
    coordinator_address=f'127.0.0.1:{port}', num_processes=2, process_id=process_id
  )
  checkpoint = checkpointing.Checkpointer('.', 'pretrain.pkl').restore()
  missing = checkpointing.load_checkpoint('absent.pkl', missing_ok=True)
  # 64-bit values survive the broadcast (JAX would narrow them to 32 bits).
  big = distributed.from_process_0(np.array([2**40 + process_id, -3], np.int64))
  with open(output, 'w') as f:
    json.dump(
      dict(
        step=checkpoint['step'],
        weights=np.asarray(checkpoint['experiment_state'].online_params['w']).tolist(),
        rng=np.asarray(jax.random.key_data(checkpoint['rng'])).tolist(),
        missing=missing,
        big=big.tolist(),
      ),
      f,
    )


if __name__ == '__main__':
  main()
