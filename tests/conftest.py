"""Shared test setup: quiet TensorFlow, keep tf.data off any accelerator."""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
