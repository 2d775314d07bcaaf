"""The exceptions a user of mlx_notebook can see, all rooted in :class:`MLXNotebookError`.

::

    MLXNotebookError(Exception)
     ├── RunnerStartError          the runner could not be started or failed to load
     │    └── RunnerStartTimeout   no progress for too long while starting
     ├── InsufficientMemoryError   the memory pre-flight refused a model
     ├── RunnerExitedError         the runner process died (exit code or signal, stderr lines)
     ├── RunnerUnavailableError    the runner does not answer (hung, unreachable)
     ├── GenerationError           the runner reported an error for one request
     ├── ProtocolError             the runner answered something the protocol does not allow
     ├── ModelNotLoadedError       no model of that name is loaded in this kernel
     └── InvalidArgumentError      an argument of an API call (or a magic's option) is wrong

Only the client boundary (``connection.py``) translates httpx errors into these,
always keeping the cause (``raise ... from exc``).
"""

from __future__ import annotations


class MLXNotebookError(Exception):
    """Base of every error mlx_notebook raises on purpose."""


class RunnerStartError(MLXNotebookError):
    """The runner could not be started, or it exited/failed while loading its model."""


class RunnerStartTimeout(RunnerStartError):
    """The runner made no progress for longer than the start timeout."""


class InsufficientMemoryError(MLXNotebookError):
    """The model (weights + KV cache) would not fit in the memory available to MLX."""


class RunnerExitedError(MLXNotebookError):
    """The runner process is gone; the message names the exit code or signal and its last errors."""


class RunnerUnavailableError(MLXNotebookError):
    """The runner process exists but does not answer."""


class GenerationError(MLXNotebookError):
    """The runner rejected or failed one request; the runner itself stays usable."""


class ProtocolError(MLXNotebookError):
    """The runner sent something the protocol does not allow (or speaks another version)."""


class ModelNotLoadedError(MLXNotebookError, KeyError):
    """No model of that name is loaded in this kernel."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidArgumentError(MLXNotebookError, ValueError):
    """An argument is out of range or does not go with another; ``field`` names it.

    The API raises it, so a function and its magic refuse the same input alike.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


__all__ = [
    "MLXNotebookError",
    "RunnerStartError",
    "RunnerStartTimeout",
    "InsufficientMemoryError",
    "RunnerExitedError",
    "RunnerUnavailableError",
    "GenerationError",
    "ProtocolError",
    "ModelNotLoadedError",
    "InvalidArgumentError",
]
