"""Experiment configurations: `get_config(...)` returning keyword arguments."""
