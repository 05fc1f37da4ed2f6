"""``python -m lossbench new-plugin NAME [--kind loss|optimizer|model|dataset] [--dir DIR]``: a
plugin package that installs and passes as generated: ``lossbench-NAME/`` with one module
(``lossbench_NAME.py``, one working component of the kind), its entry point, a README, the
kit's test, golden values of that component and the generator that wrote them.

Why a command, not a cookiecutter or copier template (as llm and datasette ship): the package it
makes must match the installed lossbench (its plugin interface version, the kit's API, the
golden-file format), and a template fetched from elsewhere can drift from it; the command needs
no other tool and no network, and lossbench's own tests install what it makes and run its tests
(tests/test_new_plugin.py). The files are plain templates in ``authoring/templates/`` should a
cookiecutter ever be wanted.

The golden values shipped for each kind were computed by the kind's ``tests/make_golden.py``
(torch 2.13 for loss, optimizer and model) and are copied with the component's name.
"""

from __future__ import annotations

import json
import keyword
import re
import sys
from pathlib import Path

from lossbench import PLUGIN_API, __version__
from lossbench.errors import ConfigError
from lossbench.plugins import build_plugin_manager
from lossbench.testing import golden

TEMPLATES = Path(__file__).with_name("templates")
KINDS = {  # kind -> (config group, what the component is, where its golden values come from)
    "loss": ("loss", "A Smooth L1 loss", "torch (torch.nn.SmoothL1Loss)"),
    "optimizer": ("optimizer", "SGD with momentum", "torch (torch.optim.SGD)"),
    "model": ("model", "A one-hidden-layer tanh network", "torch (Linear, Tanh, Linear)"),
    "dataset": ("data", "A seeded sin(x) regression set", "its definition, written out again"),
}
def _check_name(name: str, kind: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise ConfigError(
            f"new-plugin {name!r}: NAME must be a lower-case Python identifier (letters, digits, "
            f"underscores), as in {KINDS[kind][0]}=NAME. Fix: pass e.g. new-plugin my_{kind}."
        )
    group = KINDS[kind][0]
    if name in build_plugin_manager(entry_points=False).registry.names(group):
        raise ConfigError(
            f"new-plugin {name}: {group}={name} is a built-in; two components with one name "
            f"cannot be loaded together. Fix: pick another name, e.g. my_{name}."
        )


def _words(name: str, kind: str) -> dict[str, str]:
    group, what, source = KINDS[kind]
    return {
        "__MODULE__": f"lossbench_{name}",
        "__DIST__": f"lossbench-{name.replace('_', '-')}",
        "__CAMEL__": "".join(part.title() for part in name.split("_")),
        "__NAME__": name,
        "__GROUP__": group,
        "__KIND__": kind,
        "__DESCRIPTION__": what,
        "__SOURCE__": source,
        "__LOSSBENCH_VERSION__": __version__,
        "__PLUGIN_API__": str(PLUGIN_API),
        "__MAKE_GOLDEN_ARGS__": "" if kind == "dataset" else "--python /tmp/torchenv/bin/python",
    }


def _fill(template: Path, words: dict[str, str]) -> str:
    text = template.read_text()
    for key in sorted(words, key=len, reverse=True):
        text = text.replace(key, words[key])
    return text


def write_plugin(name: str, kind: str, where: Path) -> Path:
    """Write the package for component ``name`` of ``kind`` into ``where``; its directory."""
    _check_name(name, kind)
    words = _words(name, kind)
    root = Path(where) / words["__DIST__"]
    if root.exists():
        raise ConfigError(f"{root} exists: new-plugin writes only into a new directory. Fix: "
                          "remove it, or pass another NAME or --dir.")  # fmt: skip
    files = {
        "pyproject.toml": TEMPLATES / "common" / "pyproject.toml.tmpl",
        "README.md": TEMPLATES / "common" / "README.md.tmpl",
        f"{words['__MODULE__']}.py": TEMPLATES / kind / "plugin.py.tmpl",
        f"tests/test_{name}.py": TEMPLATES / "common" / "test_plugin.py.tmpl",
        "tests/make_golden.py": TEMPLATES / kind / "make_golden.py.tmpl",
        "tests/golden_source.py": TEMPLATES / kind / "golden_source.py.tmpl",
    }
    (root / "tests").mkdir(parents=True)
    for target, template in files.items():
        (root / target).write_text(_fill(template, words))
    values = json.loads((TEMPLATES / kind / "golden.json").read_text())
    values["component"] = f"{words['__GROUP__']}.{name}"
    golden.write(root / "tests" / f"golden_{name}.json", values)
    return root


def new_plugin_command(name: str, kind: str = "loss", where: Path | None = None) -> int:
    """The command (its arguments parsed by ``lossbench.cli``): write the package into
    ``where`` (default: the current folder), say what to do next; 2 on a mistake."""
    try:
        if kind not in KINDS:
            raise ConfigError(f"--kind {kind} is not a kind of component. Choices: "
                              f"{', '.join(KINDS)}. Fix: pass e.g. --kind loss.")  # fmt: skip
        root = write_plugin(name, kind, Path.cwd() if where is None else Path(where))
    except ConfigError as exc:
        print(f"lossbench: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {root}: {KINDS[kind][0]}={name} ({KINDS[kind][1]}), its kit test and "
          f"golden values. Next:\n  pip install -e '{root}[test]'\n  python -m lossbench check "
          f"{name}\n  python -m pytest {root / 'tests'}")  # fmt: skip
    return 0
