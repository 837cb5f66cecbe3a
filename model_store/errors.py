"""Errors raised by the model store. The server maps them to wire codes (server/errors.py)."""

from __future__ import annotations


class ModelStoreError(Exception):
    """Base class of model store errors."""


class ModelNotFoundError(ModelStoreError):
    """No model of that name in the repository or registry."""


class VersionNotFoundError(ModelStoreError):
    """The model exists but not that version (or it is not being served)."""


class ModelUnavailableError(ModelStoreError):
    """The model is known but has no version ready to serve."""


class LoadError(ModelStoreError):
    """A model version could not be loaded: bad file, bad config, bad signature."""
