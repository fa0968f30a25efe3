"""Load modes built on the run core: one package per mode."""
