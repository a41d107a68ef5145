"""Typed errors. Library code raises these; only the CLI turns them into one line and exit code 2."""


class SharpenError(Exception):
    """Base class for every error a user can fix: the message names the problem and the fix."""


class ConfigError(SharpenError):
    """A bad option, argument or config value."""


class TaskError(SharpenError):
    """An unknown task, a missing or malformed data file."""


class ModelError(SharpenError):
    """An unknown model name or a model directory that cannot be loaded."""


class BudgetError(SharpenError):
    """A compute budget that cannot be honoured (e.g. smaller than one step)."""


class BackendError(SharpenError):
    """A model server that is down, does not serve the model, refuses a request or lacks a feature."""
