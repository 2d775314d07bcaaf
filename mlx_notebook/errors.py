"""The exceptions a user of mlx_notebook can see, all rooted in :class:`MLXNotebookError`.

::

    MLXNotebookError(Exception)
     ├── RunnerStartError          the runner could not be started or failed to load
     │    └── RunnerStartTimeout   no progress for too long while starting
     ├── InsufficientMemoryError   the memory pre-flight refused a model (.required, .available)
     ├── RunnerExitedError         the runner process died (.returncode, .signal)
     ├── RunnerUnavailableError    the runner does not answer (hung, unreachable)
     │    └── RunnerStalledError   a stream went silent past its limit (.silence)
     ├── GenerationError           the runner reported an error for one request
     ├── ProtocolError             the runner answered something the protocol does not allow
     ├── ModelNotLoadedError       no model of that name is loaded in this kernel (.name)
     ├── ModelLoadError            a model spec or its files cannot be used
     ├── HostsError                a hostfile or a runner group's hosts are unusable
     ├── ConfigError               an unknown setting or a value of the wrong type (.key)
     ├── InterpolationError        a ``{name}`` of a prompt cannot be filled (.name)
     ├── TrainingError             a training runner failed or died (.adapter_path: what was saved)
     ├── PromptCacheError          a saved prompt cache cannot be used (.name, .reason)
     └── InvalidArgumentError      an argument of an API call or a magic is wrong (.field)
          └── TrainingDataError    a row of training data is unusable (.row, .split)

Every error keeps what code needs as fields, so no code matches message text:
``status`` is the HTTP status of the runner's answer and ``url`` the runner's
address, where there are ones. Only the connection boundary
(``control/connection.py``) translates httpx errors into these, always keeping
the cause (``raise ... from exc``). Runner-internal errors (a GGUF it cannot
read, a bad shard plan) stay in the runner and reach the kernel as one of these.
"""

from __future__ import annotations

import signal as _signal

__all__ = [
    "MLXNotebookError",
    "RunnerStartError",
    "RunnerStartTimeout",
    "InsufficientMemoryError",
    "RunnerExitedError",
    "RunnerUnavailableError",
    "RunnerStalledError",
    "GenerationError",
    "ProtocolError",
    "ModelNotLoadedError",
    "ModelLoadError",
    "HostsError",
    "ConfigError",
    "InterpolationError",
    "InvalidArgumentError",
    "TrainingError",
    "TrainingDataError",
    "PromptCacheError",
]

# Messages used in more than one place.
NO_MODEL_LOADED = "No model loaded: run `%mlx load demo` (or mlx_notebook.load('demo')) first."
NOT_LOADED = ("No model named {name!r} is loaded (loaded: {loaded}). "
              "Load it with `%mlx load {name}`.")


class MLXNotebookError(Exception):
    """Base of every error mlx_notebook raises on purpose."""

    def __init__(self, message: str = "", *, status: int | None = None,
                 url: str | None = None) -> None:
        super().__init__(message)
        self.status = status  # HTTP status of the runner's answer, when one caused this
        self.url = url  # the runner's address, when it matters (a remote runner)


class RunnerStartError(MLXNotebookError):
    """The runner could not be started, or it exited/failed while loading its model."""


class RunnerStartTimeout(RunnerStartError):
    """The runner made no progress for longer than the start timeout."""


class InsufficientMemoryError(MLXNotebookError):
    """The model (weights + KV cache) would not fit in the memory available to MLX."""

    def __init__(self, message: str, *, required: int | None = None,
                 available: int | None = None) -> None:
        super().__init__(message)
        self.required = required
        self.available = available


class RunnerExitedError(MLXNotebookError):
    """The runner process is gone; the message names the exit code or signal and its last errors."""

    def __init__(self, message: str, *, returncode: int | None = None,
                 url: str | None = None) -> None:
        super().__init__(message, url=url)
        self.returncode = returncode

    @property
    def signal(self) -> str | None:
        """``"SIGKILL"`` when a signal ended it (a negative return code), else None."""
        if self.returncode is None or self.returncode >= 0:
            return None
        try:
            return _signal.Signals(-self.returncode).name
        except ValueError:
            return None


class RunnerUnavailableError(MLXNotebookError):
    """The runner process exists but does not answer."""


class RunnerStalledError(RunnerUnavailableError):
    """A stream sent nothing, not even a keep-alive, for ``silence`` seconds: the runner's
    worker is stuck, or its process is stopped or out of reach."""

    def __init__(self, message: str, *, silence: float, url: str | None = None) -> None:
        super().__init__(message, url=url)
        self.silence = silence


class GenerationError(MLXNotebookError):
    """The runner rejected or failed one request; the runner itself stays usable."""


class ProtocolError(MLXNotebookError):
    """The runner sent something the protocol does not allow (or speaks another version)."""


class ModelNotLoadedError(MLXNotebookError, KeyError):
    """No model of that name is loaded in this kernel (``name`` is None: none at all)."""

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelLoadError(MLXNotebookError):
    """A model spec that cannot be resolved, or model files that cannot be loaded."""


class HostsError(MLXNotebookError):
    """A hostfile that cannot be used, or hosts a runner group cannot be started on."""


class ConfigError(MLXNotebookError):
    """An unknown setting or a value of the wrong type."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class InterpolationError(MLXNotebookError):
    """A ``{name}`` in a prompt that is not defined, or a malformed field."""

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class InvalidArgumentError(MLXNotebookError, ValueError):
    """An argument is out of range or does not go with another; ``field`` names it.

    The API raises it, so a function and its magic refuse the same input alike.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TrainingError(MLXNotebookError):
    """Training failed in its runner, or the runner died; ``adapter_path`` is the adapter
    saved before that, if any (None: nothing usable was saved)."""

    def __init__(self, message: str, *, adapter_path: str | None = None) -> None:
        super().__init__(message)
        self.adapter_path = adapter_path


class PromptCacheError(MLXNotebookError):
    """A saved prompt cache that cannot be used: ``reason`` is "unknown" (no such name),
    "mismatch" (saved with other weights: never loaded into these) or "corrupt" (a damaged
    file); ``name`` is the cache's. The runner that refused it stays usable."""

    def __init__(self, message: str, *, name: str | None = None, reason: str = "unknown",
                 status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.name = name
        self.reason = reason


class TrainingDataError(InvalidArgumentError):
    """A row of training data is unusable, found before anything starts; ``row`` is its index
    (in ``split``: "train" or "valid")."""

    def __init__(self, message: str, *, row: int | None = None, split: str = "train") -> None:
        super().__init__(message, field="data")
        self.row = row
        self.split = split
