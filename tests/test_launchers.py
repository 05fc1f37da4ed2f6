"""Launchers are a kind: a third-party launcher installed as a package with an entry point runs
a real sweep (one worker process per trial, tests/plugins/per_trial), ``sweep.launcher`` names
a registered launcher or is refused with the choices, a launcher's options are the node
``sweep.NAME`` (``sweep.ray.*`` keeps its spelling), and a spec that cannot work is refused
naming the plugin."""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_sweep import load

import lossbench
from lossbench.config import compose
from lossbench.errors import ConfigError, PluginError
from lossbench.plugins import build_plugin_manager
from lossbench.sweep.coordinator import make_launcher, make_plan

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tests" / "plugins" / "per_trial"
BASE = ["data=iris", "tracking=none", "trainer.epochs=2", "trainer.progress=false"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """tests/plugins/per_trial pip-installed into a folder of its own (``--target``), which a
    process finds on its PYTHONPATH, entry point included; nothing enters this venv."""
    target = tmp_path_factory.mktemp("per-trial-installed")
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", *isolation,
           "--target", str(target), str(PACKAGE)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(target)])
    env["LOSSBENCH_LOAD_PLUGINS"] = "per_trial"  # its entry point, and no other installed one
    return env


def lossbench_cmd(env, *args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "lossbench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_a_launcher_from_an_installed_package_runs_a_sweep_one_process_per_trial(
    installed, tmp_path
):
    listing = lossbench_cmd(installed, "plugins", "--json", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    row = next(r for r in json.loads(listing.stdout) if r["name"] == "per_trial")
    assert row["components"] == {"sweep.launcher": ["per_trial"]}
    assert row["version"] == "0.1.0"
    r = lossbench_cmd(installed, "--multirun", "optimizer.lr=0.1,0.03,0.01", *BASE,
                      "sweep.study_name=pt", "sweep.launcher=per_trial", "sweep.n_jobs=2",
                      "sweep.per_trial.log_dir=job-logs", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    trials = load(tmp_path, "pt").trials
    assert sorted(t.params["optimizer.lr"] for t in trials) == [0.01, 0.03, 0.1]
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert len({t.user_attrs["pid"] for t in trials}) == 3  # each trial its own process
    logs = sorted(p.name for p in (tmp_path / "multirun/pt/job-logs").iterdir())
    assert logs == ["job-0.log", "job-1.log", "job-2.log"]  # and no job more than trials
    assert not list((tmp_path / "multirun/pt").glob("worker-*.log"))  # not the local launcher
    typo = lossbench_cmd(installed, "--multirun", "optimizer.lr=0.1,0.01", *BASE,
                         "sweep.launcher=per_trail", cwd=tmp_path)  # fmt: skip
    assert typo.returncode == 2, typo.stdout + typo.stderr
    assert "sweep.launcher='per_trail' is not a known launcher. Available: local, per_trial, " \
           "ray. Fix:" in typo.stderr and "Traceback" not in typo.stderr  # fmt: skip


class Inline(lossbench.Launcher):
    """A launcher registered by the tests: the checks below never start it."""

    def start(self):
        pass

    def running(self):
        return False

    def interrupt(self):
        pass

    def codes(self):
        return []


@dataclasses.dataclass
class InlineOptions:
    slots: int = 1


class Registers:
    def __init__(self, *specs):
        self.specs = specs

    @lossbench.hookimpl
    def register_launchers(self, register):
        for spec in self.specs:
            register(spec)


def registering(*specs):
    return build_plugin_manager(entry_points=False, extra=[("registers", Registers(*specs))])


def test_an_unknown_launcher_is_refused_with_the_choices_a_plugins_included(pm):
    with pytest.raises(ConfigError) as info:
        make_plan(["optimizer.lr=0.1,0.01", *BASE, "sweep.launcher=slurm"], pm.registry)
    assert str(info.value).startswith(
        "sweep.launcher='slurm' is not a known launcher. Available: local, ray. Fix: pass one "
        "of those"
    )
    mine = registering(lossbench.LauncherSpec(name="inline", launcher=Inline))
    with pytest.raises(ConfigError, match="Available: inline, local, ray. Fix:"):
        make_plan(["optimizer.lr=0.1,0.01", *BASE, "sweep.launcher=slurm"], mine.registry)


def test_hydras_launcher_choice_names_a_plugins_launcher_too():
    mine = registering(lossbench.LauncherSpec(name="inline", launcher=Inline))
    plan, _, _ = make_plan(["hydra/launcher=inline", "optimizer.lr=0.1,0.01", *BASE],
                           mine.registry)  # fmt: skip
    assert plan.launcher == "inline"
    assert "hydra/launcher=inline: sweep.launcher=inline" in plan.notes
    with pytest.raises(ConfigError, match=r"Choices: basic, joblib .*, ray, inline \(plugins\)"):
        make_plan(["hydra/launcher=slurm", "optimizer.lr=0.1,0.01", *BASE], mine.registry)


def test_the_ray_launchers_options_keep_their_spelling(pm):
    plan, base, _ = make_plan(["optimizer.lr=0.1,0.01", *BASE, "sweep.launcher=ray",
                               "sweep.ray.address=auto", "sweep.ray.cpus_per_trial=2"],
                              pm.registry)  # fmt: skip
    assert (plan.launcher, plan.launcher_options) == (
        "ray", {"address": "auto", "cpus_per_trial": 2.0, "shared_filesystem": False})
    with pytest.raises(ConfigError, match="Did you mean sweep.ray.address?"):
        compose(["sweep.ray.adress=auto"], registry=pm.registry)
    local, base, _ = make_plan(["optimizer.lr=0.1,0.01", *BASE], pm.registry)
    launcher = make_launcher(local, base, pm.registry)
    assert (type(launcher).__name__, launcher.options, launcher.shares_sweep_dir) == (
        "LocalLauncher", None, True)


class NotALauncher:
    pass


class Half(lossbench.Launcher):
    def start(self):
        pass


@pytest.mark.parametrize("spec,message", [
    ("inline", "registered 'inline' as a launcher, but a launcher must be a lossbench.Launcher"),
    (lossbench.LauncherSpec(name="in line", launcher=Inline), "its name must be an identifier"),
    (lossbench.LauncherSpec(name="x", launcher=NotALauncher), "not a lossbench.Launcher subclass"),
    (lossbench.LauncherSpec(name="x", launcher=Half),
     "does not implement codes, interrupt, running"),
    (lossbench.LauncherSpec(name="x", launcher=Inline, options={"slots": 1}),
     "options={'slots': 1}, which is not a dataclass"),
    (lossbench.LauncherSpec(name="local", launcher=Inline),
     "two plugins register a launcher named 'local': 'lossbench.builtin.launchers' and "
     "'registers'"),
])  # fmt: skip
def test_a_launcher_spec_that_cannot_work_is_refused_naming_the_plugin(spec, message):
    with pytest.raises(PluginError, match="Fix") as info:
        registering(spec)
    assert message in str(info.value)


def test_a_launcher_whose_options_take_a_sweep_setting_or_whose_class_does_not_import(pm):
    taken = registering(lossbench.LauncherSpec(name="storage", launcher=Inline,
                                               options=InlineOptions))  # fmt: skip
    with pytest.raises(PluginError, match="sweep.storage is one of the sweep's own settings"):
        compose([], registry=taken.registry)
    missing = registering(lossbench.LauncherSpec(name="gone", launcher="no_such_module:Gone"))
    plan, base, _ = make_plan(["optimizer.lr=0.1,0.01", *BASE, "sweep.launcher=gone"],
                              missing.registry)  # fmt: skip
    with pytest.raises(PluginError, match="'no_such_module:Gone', which does not import"):
        make_launcher(plan, base, missing.registry)


def test_the_guide_shows_the_launcher_the_tests_run():
    guide = (REPO / "docs" / "plugins.md").read_text()
    section = guide.split("## Writing a launcher\n", 1)[1].split("\n## ", 1)[0]
    for module in ("__init__.py", "launcher.py"):
        source = (PACKAGE / "lossbench_per_trial" / module).read_text()
        assert f"```python\n{source}```" in section, module
