"""Alias module: the bundle writer lives in :mod:`lmae_sdk.export.api`."""
from .api import engine_name, export_bundle, file_name, shared_from_checkpoint  # noqa: F401
