"""Tools for plugin authors, as commands: ``new_plugin`` writes a plugin package that installs and
passes as generated (``python -m lossbench new-plugin NAME``), ``check`` runs the conformance kit
against installed plugins and prints the report (``python -m lossbench check PLUGIN``). They sit
above the kit (``lossbench.testing``) and below the command line, which imports them only for
these two commands."""

from lossbench.authoring.check import check_command
from lossbench.authoring.new_plugin import new_plugin_command

COMMANDS = {"new-plugin": new_plugin_command, "check": check_command}


def run(argv: list[str]) -> int:
    """Run ``argv[0]`` (a command of ``COMMANDS``) with the rest; its exit code."""
    return COMMANDS[argv[0]](argv[1:])


__all__ = ["COMMANDS", "check_command", "new_plugin_command", "run"]
