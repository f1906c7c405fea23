"""Installs the `byol` package: `pip install .`"""

import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements() -> list[str]:
  lines = (_HERE / 'requirements.txt').read_text().splitlines()
  return [line.strip() for line in lines if line.strip() and not line.startswith('#')]


setuptools.setup(
  name='byol',
  version='0.1.0',
  description='BYOL (Bootstrap Your Own Latent) self-supervised learning in JAX/Haiku.',
  long_description=(_HERE / 'README.md').read_text(),
  long_description_content_type='text/markdown',
  license='Apache-2.0',
  packages=setuptools.find_packages(include=['byol', 'byol.*']),
  python_requires='>=3.11',
  install_requires=_requirements(),
  entry_points={'console_scripts': ['byol=byol.main_loop:run']},
)
