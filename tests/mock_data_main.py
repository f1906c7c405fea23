"""Runs `python -m byol.main_loop <flags>` on TFDS mock data, for the end-to-end tests.

`tfds.testing.mock_data` replaces every dataset's records by random examples generated from its
feature spec, so the real pipeline and command line run without ImageNet. The number of examples
per split comes from $BYOL_MOCK_NUM_EXAMPLES.
"""

import os
import runpy
import warnings

import tensorflow_datasets as tfds

# The same rule as pytest.ini, for the code that runs in this subprocess.
warnings.filterwarnings('error', category=DeprecationWarning, module='(jax|haiku|optax|byol)')

if __name__ == '__main__':
  with tfds.testing.mock_data(num_examples=int(os.environ['BYOL_MOCK_NUM_EXAMPLES'])):
    runpy.run_module('byol.main_loop', run_name='__main__', alter_sys=True)
