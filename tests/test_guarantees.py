"""The README's "What lossbench guarantees": every line names a test, and every test it names
exists in tests/ (a renamed or deleted test breaks this, not the promise silently)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def guarantees() -> list[str]:
    """Each promise of the section: the items of its sub-lists (single runs, sweeps)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## What lossbench guarantees", 1)[1].split("\n## ", 1)[0]
    items = re.split(r"\n\s*- ", section)[1:]
    return [item.strip() for item in items if not re.fullmatch(r"[\w ]+:", item.strip())]


def test_every_guarantee_names_a_test_that_exists():
    defined = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)\(", path.read_text(), re.M))
    items = guarantees()
    assert len(items) >= 16  # single runs and sweeps
    for item in items:
        named = re.findall(r"`(test_\w+)`", item)
        assert named, f"this guarantee names no test: {item[:80]}"
        missing = [name for name in named if name not in defined]
        assert not missing, f"{missing} named in the README do not exist"
