"""Errors a user can cause. The CLI prints them as one paragraph and exits with code 2."""


class LossbenchError(Exception):
    """Base class for errors caused by input (config, data, plugins), not by a bug."""

    exit_code = 2


class ConfigError(LossbenchError):
    """A config value is invalid: the message names the value, the choices and the fix."""


class DataError(LossbenchError):
    """The data cannot be used: missing file, missing column, non-numeric or missing values."""


class PluginError(LossbenchError):
    """A plugin failed to load or registered something invalid."""


def choices_text(choices) -> str:
    return ", ".join(sorted(choices)) or "(none)"
