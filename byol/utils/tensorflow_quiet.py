"""TensorFlow and TFDS for the input pipeline and the logs, imported without start-up chatter.

TensorFlow's C++ notices as it loads (oneDNN is on, the CPU instructions it was built for) would
otherwise open every program's output; they are held back (`byol.utils.console`) and shown at
`-v 1`. Modules of this package import `tf` and `tfds` from here, so that whichever imports them
first holds the notices back. Only the input pipeline and the logs need them: the networks, the
augmentations and the updates run without TensorFlow.
"""

from byol.utils import console

with console.held_back_start_up_notices():
  import tensorflow as tf
  import tensorflow_datasets as tfds

__all__ = ['tf', 'tfds']
