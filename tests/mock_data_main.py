"""Runs `python -m byol.main_loop <flags>` on TFDS mock data (`support.mock_tfds`), in a process
of its own: for the end-to-end tests that need one (two workers side by side, a killed worker)."""

import warnings

from byol import main_loop
import support  # This folder is on the path.

# The same rule as pytest.ini, for the code that runs in this subprocess.
warnings.filterwarnings('error', category=DeprecationWarning, module='(jax|haiku|optax|byol)')

if __name__ == '__main__':
  with support.mock_tfds():
    main_loop.run()
