"""The suite's rule: deprecated APIs of jax, haiku, optax and byol are errors, others are not."""

import warnings

import pytest


@pytest.mark.parametrize(
  'module', ['jax._src.numpy', 'haiku._src.pool', 'optax._src.alias', 'byol.byol_experiment']
)
def test_deprecation_warnings_of_our_stack_are_errors(module):
  with pytest.raises(DeprecationWarning):
    warnings.warn_explicit('old API', DeprecationWarning, 'file.py', 1, module=module)


def test_deprecation_warnings_of_other_packages_are_not_errors():
  with pytest.warns(DeprecationWarning):
    warnings.warn_explicit(
      'old API', DeprecationWarning, 'file.py', 1, module='tensorflow.python.util'
    )
