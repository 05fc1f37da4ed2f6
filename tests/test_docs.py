"""The documentation's code runs."""

import importlib.util
import re
from pathlib import Path

import pytest
from test_conformance import Broken

import lossbench
from conftest import TINY
from lossbench.plugins import build_plugin_manager
from lossbench.testing import ConformanceError, checks_for

ROOT = Path(__file__).resolve().parents[1]


def test_plugin_guide_example_trains(tmp_path):
    text = (ROOT / "docs" / "plugins.md").read_text()
    section = text.split("## A complete example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "sqhinge.py").write_text(code)
    pm = build_plugin_manager(str(tmp_path), entry_points=False)
    run = lossbench.train(
        overrides=[
            *TINY,
            "data=iris",
            "loss=sqhinge",
            "loss.margin=0.5",
            "trainer.epochs=8",
            "optimizer.lr=0.01",
        ],
        plugin_manager=pm,
    )
    assert run.status == "finished"
    assert run.history[-1]["val_loss"] < run.history[0]["val_loss"]


def block_after(heading: str, language: str) -> str:
    text = (ROOT / "docs" / "plugins.md").read_text()
    section = text.split(f"## {heading}", 1)[1]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


def test_plugin_guide_kit_example_passes(tmp_path):
    (tmp_path / "sqhinge.py").write_text(block_after("A complete example", "python"))
    test_file = tmp_path / "test_sqhinge.py"
    test_file.write_text(block_after("Testing a plugin with the conformance kit", "python"))
    spec = importlib.util.spec_from_file_location("test_sqhinge_from_docs", test_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (mark,) = module.test_lossbench_conformance.pytestmark
    checks = mark.args[1]
    assert len(checks) == 8  # the guide says so
    assert checks[0].id == "plugin-sqhinge-registers"  # named as --plugins-dir names it
    assert "loss-sqhinge-gradient_matches_finite_differences" in {c.id for c in checks}
    for check in checks:
        module.test_lossbench_conformance(check)


def test_plugin_guide_packaging_example_is_the_lion_pyproject():
    shown = block_after("Packaging a plugin", "toml")
    assert shown == (ROOT / "plugins" / "lossbench-lion" / "pyproject.toml").read_text()


def test_plugin_guide_failure_example_is_what_the_kit_says():
    shown = " ".join(block_after("Testing a plugin with the conformance kit", "text").split())
    checks = {c.id: c for c in checks_for(Broken())}
    with pytest.raises(ConformanceError) as info:
        checks["loss-steep-gradient_matches_finite_differences"]()
    assert str(info.value) == shown


def test_plugin_guide_nadam_is_the_example_plugin_and_trains_with_scalar_state(tmp_path):
    shown = block_after("An optimizer with scalar state: NAdam", "python")
    source = ROOT / "plugins" / "lossbench-nadam" / "lossbench_nadam.py"
    assert shown == source.read_text()
    (tmp_path / "nadam_from_docs.py").write_text(shown)
    pm = build_plugin_manager(str(tmp_path), entry_points=False)
    spec = pm.registry.get("optimizer", "nadam")
    assert (spec.scalar_slots, spec.api) == (1, lossbench.PLUGIN_API)
    run = lossbench.train(
        overrides=[*TINY, "data=iris", "optimizer=nadam", "trainer.epochs=8"], plugin_manager=pm
    )
    assert run.status == "finished" and run.path == "fused"
    assert run.history[-1]["val_loss"] < run.history[0]["val_loss"]
    checks = checks_for(tmp_path / "nadam_from_docs.py")
    assert "optimizer-nadam-step_cost_does_not_grow_with_t" in {c.id for c in checks}
    for check in checks:
        check()


def test_plugin_guide_states_the_interface_version_and_the_signatures():
    from lossbench.kernels import signature_text

    text = (ROOT / "docs" / "plugins.md").read_text()
    assert f"`lossbench.PLUGIN_API` ({lossbench.PLUGIN_API})" in text
    for role, name in (("loss", "loss"), ("optimizer", "step"), ("forward", "forward")):
        expected = name + signature_text(role, "float32").replace("float32", "F")
        assert f"`{expected}" in text, expected
    assert "once per dtype per installation" in text and "per machine" not in text
