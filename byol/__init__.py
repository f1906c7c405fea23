"""BYOL (Bootstrap Your Own Latent) self-supervised pretraining in JAX/Haiku."""
