"""Errors a user can cause (``LossbenchError``: the CLI prints them as one paragraph and exits
with code 2), and ``PluginFailure``: a plugin's own code raised while a run used it (exit 1)."""


class LossbenchError(Exception):
    """Base class for errors caused by input (config, data, plugins), not by a bug."""

    exit_code = 2


class ConfigError(LossbenchError):
    """A config value is invalid: the message names the value, the choices and the fix."""


class DataError(LossbenchError):
    """The data cannot be used: missing file, missing column, non-numeric or missing values."""


class PluginError(LossbenchError):
    """A plugin failed to load or registered something invalid."""


class PluginFailure(Exception):
    """A plugin's code (a kernel, a NumPy reference, a lifecycle hook) raised while a run used
    it: a bug in the plugin, not bad input. The run ends ``failed`` with this message as its
    error (the plugin, the function and the exception named), ``train`` raises it after every
    ``on_run_end`` hook ran, and the CLI prints it as one paragraph and exits 1."""

    exit_code = 1


def choices_text(choices) -> str:
    return ", ".join(sorted(choices)) or "(none)"


def require(condition: bool, key: str, value, rule: str, example) -> None:
    """Raise the standard ``ConfigError`` for a value that breaks ``rule`` unless ``condition``:
    ``optimizer.lr=-1 is not allowed: it must be > 0. Fix: pass e.g. optimizer.lr=0.001.``"""
    if not condition:
        raise ConfigError(
            f"{key}={value} is not allowed: {rule}. Fix: pass e.g. {key}={example}."
        )


def positive_int(value, key: str, example: int) -> None:
    """``require`` a positive integer (bools are not integers here)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    require(ok, key, value, "it must be a positive integer", example)
