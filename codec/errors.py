"""Errors a user can cause. Each message says what was wrong and what to do about it."""


class CascadeKitError(Exception):
    """Base class of every error cascadekit raises on purpose."""


class WeightsError(CascadeKitError):
    """Weights are missing, corrupt, truncated, or do not fit the model (missing/unexpected/mis-shaped keys)."""


class InputError(CascadeKitError):
    """An input (image, corpus, store, config value) cannot be used."""


class PrecisionError(CascadeKitError):
    """A computation overflowed in the requested dtype (typically float16)."""


class DependencyError(CascadeKitError, ImportError):
    """An installed package cannot be used with the installed torch (e.g. a transformers release too new for it)."""


class OutputError(CascadeKitError):
    """An output cannot be written (read-only or missing folder, a file where a folder should be, full disk),
    or would silently replace the results of an earlier run."""
