"""The run core: prepare, execute and finalize one measured run."""
