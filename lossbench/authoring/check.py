"""``python -m lossbench check PLUGIN... [--fast] [--options JSON]``: the conformance kit against
plugins as installed, printed as a report, one line per check (passed, failed with the message,
skipped with the reason); exit code 0 when none fails, 1 when one does, 2 when a PLUGIN cannot be
found or loaded.

A PLUGIN is an entry-point name of the group ``lossbench`` (what ``python -m lossbench plugins``
lists), the distribution that provides it (``lossbench-focal``), an importable module, or the
path of a single-file plugin (``plugins/sqhinge.py``). ``--fast`` is the kit's fast mode
(``LOSSBENCH_KIT_FAST=1``), ``--options`` what ``parametrize_with_checks(options=...)`` takes.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
import time
from pathlib import Path

from lossbench.errors import ConfigError
from lossbench.plugins import ENTRY_POINT_GROUP
from lossbench.testing import checks_for, run_checks


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def find_plugin(name: str):
    """The plugin ``name`` names, as the kit takes it (a module, or a file's path)."""
    if name.endswith(".py"):
        if not Path(name).is_file():
            raise ConfigError(f"check {name}: no such file. Fix: pass the path of a plugin file.")
        return Path(name)
    points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    for ep in points:
        dist = getattr(ep, "dist", None)
        if name == ep.name or (dist is not None and _canonical(dist.name) == _canonical(name)):
            return ep.value.split(":")[0]  # imported by the kit: an import error is its report
    try:
        if importlib.util.find_spec(name) is not None:
            return name
    except (ImportError, ValueError):
        pass
    known = ", ".join(sorted(ep.name for ep in points)) or "none"
    raise ConfigError(
        f"check {name}: no installed plugin, module or file has that name (entry points of the "
        f"group {ENTRY_POINT_GROUP!r}: {known}). Fix: pip install the plugin, or pass its "
        "entry-point name, its module or the path of its file."
    )


def _options(text: str | None) -> dict | None:
    """``--options JSON``, read."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--options {text!r} is not JSON ({exc}). Fix: pass e.g. "
                          '--options \'{"focal": {"gamma": 0.5}}\'.') from None  # fmt: skip


_MARK = {"passed": "ok  ", "failed": "FAIL", "skipped": "skip"}


def report(results, seconds: float) -> str:
    """The report ``check`` prints."""
    lines = []
    for r in results:
        line = f"{_MARK[r.status]}  {r.check.id}  ({r.seconds:.2f} s)"
        if r.message:
            line += "\n      " + r.message
        lines.append(line)
    counts = {s: sum(r.status == s for r in results) for s in _MARK}
    lines.append(f"{len(results)} checks: {counts['passed']} passed, {counts['failed']} failed, "
                 f"{counts['skipped']} skipped in {seconds:.1f} s")  # fmt: skip
    return "\n".join(lines)


def check_command(names: list[str], fast: bool = False, options: str | None = None) -> int:
    """The command (its arguments parsed by ``lossbench.cli``): 0 when every check passes or
    skips, 1 when one fails, 2 on a mistake."""
    start = time.perf_counter()
    try:
        options = _options(options)
        plugins = [find_plugin(name) for name in names]
    except ConfigError as exc:
        print(f"lossbench: error: {exc}", file=sys.stderr)
        return 2
    checks = checks_for(*plugins, options=options, fast=fast or None)
    mode = " (fast mode: float64 only, no bounds-checked compile)" if checks[0].fast else ""
    print(f"lossbench check {' '.join(names)}: {len(checks)} checks{mode}", flush=True)
    results = run_checks(checks)
    print(report(results, time.perf_counter() - start))
    return 1 if any(r.status == "failed" for r in results) else 0
