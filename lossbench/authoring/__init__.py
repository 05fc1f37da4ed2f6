"""Tools for plugin authors, as commands: ``new_plugin`` writes a plugin package that installs and
passes as generated (``python -m lossbench new-plugin NAME``), ``check`` runs the conformance kit
against installed plugins and prints the report (``python -m lossbench check PLUGIN``). They sit
above the kit (``lossbench.testing``) and below the command line, which parses their arguments and
imports them only for these two commands."""

from lossbench.authoring.check import check_command
from lossbench.authoring.new_plugin import new_plugin_command

__all__ = ["check_command", "new_plugin_command"]
