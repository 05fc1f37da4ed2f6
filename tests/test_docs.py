"""The documentation's code runs."""

import ast
import importlib.util
import inspect
import re
from pathlib import Path

import numpy as np
import pytest
from test_conformance import Broken

import lossbench
from conftest import TINY
from lossbench.builtin.losses import LOSSES
from lossbench.builtin.models import MODELS
from lossbench.builtin.optimizers import OPTIMIZERS
from lossbench.plugins import build_plugin_manager
from lossbench.testing import ConformanceError, checks_for

ROOT = Path(__file__).resolve().parents[1]
LOSSES_BY_NAME, MODELS_BY_NAME = {s.name: s for s in LOSSES}, {s.name: s for s in MODELS}
OPTIMIZERS_BY_NAME = {s.name: s for s in OPTIMIZERS}


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


def _module_from_guide(heading: str, folder: Path, name: str):
    """The guide's first Python block after ``heading``, written to ``folder`` and imported
    as the test module ``name``."""
    test_file = folder / f"{name}.py"
    test_file.write_text(block_after(heading, "python"))
    spec = importlib.util.spec_from_file_location(name, test_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plugin_guide_kit_example_passes(tmp_path):
    (tmp_path / "sqhinge.py").write_text(block_after("A complete example", "python"))
    module = _module_from_guide("Testing a plugin with the conformance kit", tmp_path,
                              "test_sqhinge_from_docs")  # fmt: skip
    (mark,) = module.test_lossbench_conformance.pytestmark
    checks = mark.args[1]
    assert len(checks) == 9  # the guide says so
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


def _shown_plugin(heading: str, source: Path, file: Path):
    """The guide's plugin under ``heading``, checked to be ``source`` and written to ``file``:
    a plugin manager with it."""
    shown = block_after(heading, "python")
    assert shown == source.read_text()
    file.write_text(shown)
    return build_plugin_manager(str(file.parent), entry_points=False)


def test_plugin_guide_nadam_is_the_example_plugin_and_trains_with_scalar_state(tmp_path):
    pm = _shown_plugin("An optimizer with scalar state: NAdam",
                       ROOT / "plugins" / "lossbench-nadam" / "lossbench_nadam.py",
                       tmp_path / "nadam_from_docs.py")  # fmt: skip
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


# ---------------------------------------------------------------------------------------------
# every signature the guide and the docstrings show is the one the code calls


def _called_signatures() -> dict[str, list[tuple[str, ...]]]:
    """Function name as documented -> the argument lists lossbench calls it with: the kernels'
    canonical arguments, and the references' as the slow path calls them (its wrappers around
    kernels take exactly the references' arguments)."""
    from lossbench.kernels import PARAMETERS
    from lossbench.training.slow import python_parts

    specs = {"model": MODELS_BY_NAME["mlp"], "loss": LOSSES_BY_NAME["mse"],
             "optimizer": OPTIMIZERS_BY_NAME["sgd"]}  # fmt: skip
    parts = python_parts(specs, specs["model"].build(specs["model"].options(), 4, 3), 3)

    def names(f):
        return tuple(inspect.signature(f).parameters)

    return {
        "loss": [PARAMETERS["loss"]], "step": [PARAMETERS["optimizer"]],
        "forward": [PARAMETERS["forward"]], "backward": [PARAMETERS["backward"]],
        "reference": [names(parts.loss), names(parts.step)],
        "reference_forward": [names(parts.forward)], "reference_backward": [names(parts.backward)],
    }  # fmt: skip


SIGNATURE = re.compile(
    r"\b(reference_forward|reference_backward|reference|step|loss|forward|backward)"
    r"\(((?:\s*[a-z_]+(?::\s*[\w\[\]:, ]+?)?\s*,){1,}\s*[a-z_]+(?::\s*[\w\[\]:, ]+?)?\s*)\)"
)


def _documented(text: str):
    """(name, argument names, the line) for each signature written in ``text`` (the guide, the
    contracts' docstrings: the kit's and the slow path's helpers have names of their own)."""
    for line_no, line in enumerate(text.splitlines(), 1):
        if line.startswith("| 1 |") or "version 1:" in line or line.lstrip().startswith("def "):
            continue  # version 1's arguments, shown as such; a plugin's code names its own
        for m in SIGNATURE.finditer(line):
            args = tuple(a.split(":")[0].strip() for a in re.split(r",(?![^\[]*\])", m.group(2)))
            yield m.group(1), args, f"{line_no}: {line.strip()}"


def _docstrings(path: Path) -> str:
    tree = ast.parse(path.read_text())
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef))]
    return "\n".join(ast.get_docstring(n) or "" for n in nodes)


def test_every_signature_in_the_guide_and_the_docstrings_is_what_the_code_calls():
    called = _called_signatures()
    sources = {
        "docs/plugins.md": (ROOT / "docs" / "plugins.md").read_text(),
        "docs/architecture.md": (ROOT / "docs" / "architecture.md").read_text(),
        **{str(p.relative_to(ROOT)): _docstrings(p) for p in (
            ROOT / "lossbench" / name for name in ("__init__.py", "specs.py", "kernels.py",
                                                   "hookspecs.py", "testing/__init__.py",
                                                   "testing/golden.py"))},
    }  # fmt: skip
    wrong, seen = [], set()
    for where, text in sources.items():
        for name, args, line in _documented(text):
            seen.add(name)
            if args not in called[name]:
                wrong.append(f"{where}:{line}\n    {name}{args}: the code calls "
                             f"{' or '.join(name + str(c) for c in called[name])}")  # fmt: skip
    assert not wrong, "\n".join(wrong)
    assert seen == set(called), f"never documented: {set(called) - seen}"


def test_plugin_guide_model_is_the_residual_mlp_and_trains(tmp_path):
    pm = _shown_plugin("Models", ROOT / "plugins" / "single-file" / "residual_mlp.py",
                       tmp_path / "residual_from_docs.py")
    run = lossbench.train(
        overrides=[*TINY, "data=iris", "model=residual_mlp", "trainer.epochs=8"], plugin_manager=pm
    )
    assert run.status == "finished" and run.path == "fused"
    assert run.history[-1]["val_loss"] < run.history[0]["val_loss"]
    assert set(run.layout.tensors) == {"W_in", "b_in", "W_block1", "b_block1", "W_block2",
                                       "b_block2", "W_out", "b_out"}  # fmt: skip
    for check in checks_for(tmp_path / "residual_from_docs.py"):
        check()


def test_plugin_guide_buffers_example_trains_and_passes_the_kit(tmp_path):
    (tmp_path / "centred_from_docs.py").write_text(block_after("Buffers: running statistics",
                                                               "python"))  # fmt: skip
    pm = build_plugin_manager(str(tmp_path), entry_points=False)
    run = lossbench.train(overrides=[*TINY, "data=iris", "model=centred_linear",
                                     "trainer.epochs=8"], plugin_manager=pm)  # fmt: skip
    assert run.status == "finished" and run.layout.buffers == ("running_mean",)
    assert run.history[-1]["val_loss"] < run.history[0]["val_loss"]
    running = run.params["running_mean"]  # training moved it from 0; the optimizer did not
    assert (running != 0).all() and np.abs(running).max() < 1.0  # standardised: means near 0
    for check in checks_for(tmp_path / "centred_from_docs.py"):
        check()


def test_plugin_guide_golden_example_runs(tmp_path, monkeypatch):
    nadam = ROOT / "plugins" / "lossbench-nadam"
    monkeypatch.syspath_prepend(str(nadam))
    (tmp_path / "golden_nadam.json").write_text((nadam / "tests" / "golden_nadam.json").read_text())
    module = _module_from_guide("Golden values", tmp_path, "test_golden_from_docs")
    (mark,) = module.test_matches_torch_nadam.pytestmark
    cases = mark.args[1]
    assert [c.id for c in cases][:2] == ["nadam-float64", "nadam-float32"] and len(cases) == 10
    for case in cases:
        module.test_matches_torch_nadam(case)


def test_every_relative_link_in_the_readme_and_docs_resolves():
    """The README is short and links to docs/ by topic: a moved or renamed page breaks this."""
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            web = target.startswith(("http://", "https://"))
            if not web and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "links to nothing:\n" + "\n".join(broken)


def test_plugin_guide_tracker_writes_the_runs_curves(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import (  # start-up: this test
        EventAccumulator,
    )

    text = (ROOT / "docs" / "plugins.md").read_text()
    section = text.split("## Writing a tracker", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "scalars.py").write_text(code)
    pm = build_plugin_manager(str(tmp_path / "plugins"), entry_points=False)
    run = lossbench.train(overrides=[*TINY[:2], "data=iris", "tracking=[scalars]"],
                          output_dir=tmp_path / "run", plugin_manager=pm)  # fmt: skip
    (event_file,) = (tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file))
    events.Reload()
    assert [s.step for s in events.Scalars("val_loss")] == [h["epoch"] for h in run.history]
    assert [s.value for s in events.Scalars("val_loss")] == pytest.approx(
        [h["val_loss"] for h in run.history], rel=1e-6)
