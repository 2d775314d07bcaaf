"""Defaults for generation, as a traitlets ``Configurable``.

Set them in three ways, all equivalent::

    %config MLXConfig.temperature = 0.7        # IPython's %config
    %mlx config temperature=0.7 max_tokens=64   # our magic
    mlx_notebook.config.get_config().temperature = 0.7

or ``c.MLXConfig.max_tokens = 128`` in ``ipython_config.py``. Per-call arguments
(``--temp``, ``max_tokens=``) always win over these defaults.
"""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Enum, Float, Int, TraitError, Unicode
from traitlets.config import Configurable

from .errors import ConfigError
from .protocol import SamplingOptions


class MLXConfig(Configurable):
    """Defaults used by ``generate``/``chat`` and the ``%%mlx`` magics."""

    temperature = Float(0.0, min=0.0, max=100.0, help="Sampling temperature; 0 is greedy.").tag(config=True)
    top_p = Float(1.0, min=0.0, max=1.0, help="Nucleus sampling mass.").tag(config=True)
    top_k = Int(0, min=0, help="Sample among the k most likely tokens; 0 = off.").tag(config=True)
    min_p = Float(0.0, min=0.0, max=1.0, help="Drop tokens below min_p x the top probability.").tag(config=True)
    repeat_penalty = Float(1.0, min=0.0, max=100.0, help="Penalty for repeated tokens; 1 = off.").tag(config=True)
    max_tokens = Int(256, min=1, help="Most tokens generated per call.").tag(config=True)
    seed = Int(None, allow_none=True, min=0, help="Fixed sampling seed; None picks a fresh one per call.").tag(config=True)
    system = Unicode("", help="Default system prompt for generate and chat ('' = none).").tag(config=True)
    format = Enum(["text", "markdown"], "text", help="How %%mlx shows the answer.").tag(config=True)
    interpolate = Bool(True, help="Fill {name} fields of prompts from the namespace.").tag(config=True)
    updates_per_second = Float(20.0, min=1.0, max=100.0, help="Most display updates per second while streaming.").tag(config=True)
    footer = Bool(True, help="Show the tokens / TTFT / tokens-per-second line after an answer.").tag(config=True)

    def options(self, **overrides: Any) -> SamplingOptions:
        """SamplingOptions from these defaults; ``None`` overrides are ignored."""
        values: dict[str, Any] = {
            "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
            "min_p": self.min_p, "repeat_penalty": self.repeat_penalty,
            "max_tokens": self.max_tokens, "seed": self.seed,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "stop" in values:
            values["stop"] = tuple(values["stop"])
        return SamplingOptions(**values)

    def settings(self) -> dict[str, Any]:
        """Current value of every setting, by name."""
        return {name: getattr(self, name) for name in sorted(self.class_own_traits(config=True))}

    def set(self, name: str, text: str) -> None:
        """Set one setting from its text form (``"0.7"``, ``"none"``, ``"true"``)."""
        traits = self.class_own_traits(config=True)
        if name not in traits:
            raise ConfigError(f"Unknown setting {name!r}; known: {', '.join(sorted(traits))}.",
                              key=name)
        trait = traits[name]
        try:
            if text.lower() in ("none", "null") and trait.allow_none:
                value: Any = None
            elif isinstance(trait, Bool):
                value = {"true": True, "1": True, "yes": True, "on": True,
                         "false": False, "0": False, "no": False, "off": False}[text.lower()]
            elif isinstance(trait, Int):
                value = int(text)
            elif isinstance(trait, Float):
                value = float(text)
            else:
                value = text
            setattr(self, name, value)
        except (KeyError, ValueError, TraitError) as exc:
            raise ConfigError(f"Bad value for {name}: {text!r} ({trait.help})", key=name) from exc

    def reset(self) -> None:
        """Back to the built-in defaults."""
        for name, trait in self.class_own_traits(config=True).items():
            setattr(self, name, trait.default())


_config: MLXConfig | None = None


def get_config() -> MLXConfig:
    """The process-wide defaults (created on first use)."""
    global _config
    if _config is None:
        _config = MLXConfig()
    return _config


def install(shell: Any) -> MLXConfig:
    """Make the defaults read the shell's config and answer to ``%config``."""
    global _config
    cfg = MLXConfig(parent=shell)
    old = _config
    _config = cfg
    configurables = shell.configurables
    if old is not None and old in configurables:
        configurables.remove(old)
    configurables.append(cfg)
    return cfg


def uninstall(shell: Any) -> None:
    """Undo :func:`install` (keeps the current values for plain Python use)."""
    if _config is not None and _config in shell.configurables:
        shell.configurables.remove(_config)
