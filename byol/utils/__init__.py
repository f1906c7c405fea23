"""Building blocks of the BYOL experiments: networks, data, optimiser, checkpoints."""
