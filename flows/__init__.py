"""Prefect flows composing the tasks: probe -> plan -> upscale batches -> assemble."""
