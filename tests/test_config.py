"""The config tree in conf/: one YAML file per built-in option, each extending its typed schema;
typed choice fields; the experiment presets; --help and --cfg job."""

import dataclasses
import enum
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from lossbench.config import GROUPS, compose, config_dir
from lossbench.config.schemas import MlflowTrackingConfig, RootConfig, TrainerConfig
from lossbench.errors import ConfigError
from lossbench.plugins import DEFAULT_PLUGINS, build_plugin_manager
from lossbench.sweep.coordinator import make_plan

CONF = config_dir()
PM = build_plugin_manager(entry_points=False)
BUILTIN = [
    (group, spec)
    for group in GROUPS
    for spec in PM.registry.components[group].values()
    if spec.plugin in DEFAULT_PLUGINS
]


def _default(f: dataclasses.Field):
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return value.value if isinstance(value, enum.Enum) else value


def _check_file(path: Path, schema: type, name: str | None) -> None:
    """The YAML option at ``path`` extends its schema and lists every field with its default
    and a comment."""
    text = path.read_text()
    data = yaml.safe_load(text)
    group = path.parent.name
    assert data.pop("defaults") == [f"/schema/{group}/{path.stem}@_here_", "_self_"], path
    if name is not None:
        assert data.pop("name") == name, path
    fields = [f for f in dataclasses.fields(schema) if f.name != "name"]
    assert list(data) == [f.name for f in fields], f"{path}: keys differ from {schema.__name__}"
    for f in fields:
        if dataclasses.is_dataclass(typing.get_type_hints(schema)[f.name]):
            nested = typing.get_type_hints(schema)[f.name]
            assert data[f.name] == {g.name: _default(g) for g in dataclasses.fields(nested)}
            continue
        expected = _default(f)
        assert data[f.name] == expected or (expected == "???" and data[f.name] is None), (
            f"{path}: {f.name}={data[f.name]!r}, the schema's default is {expected!r}"
        )
    for line in text.splitlines():
        if re.match(r"^\s*\w+:\s*\S", line) and not line.lstrip().startswith(("name:", "- ")):
            assert "#" in line, f"{path}: no comment on {line.strip()!r}"


@pytest.mark.parametrize("group,spec", BUILTIN, ids=[f"{g}-{s.name}" for g, s in BUILTIN])
def test_conf_lists_every_builtin_option(group, spec):
    _check_file(CONF / group / f"{spec.name}.yaml", spec.options, spec.name)


def test_conf_holds_the_trainer_and_tracking_options():
    _check_file(CONF / "trainer" / "default.yaml", TrainerConfig, None)
    _check_file(CONF / "tracking" / "mlflow.yaml", MlflowTrackingConfig, "mlflow")
    assert yaml.safe_load((CONF / "tracking" / "none.yaml").read_text()) == {"name": "none"}


def test_every_option_file_is_a_builtin_or_lossbench_group():
    files = {(p.parent.name, p.stem) for p in CONF.glob("*/*.yaml")}
    known = {(g, s.name) for g, s in BUILTIN}
    extra = {(g, n) for g, n in files if g in GROUPS} - known
    assert not extra, f"conf/ has options no built-in registers: {extra}"
    groups = {g for g, _ in files}
    assert groups == {*GROUPS, "trainer", "tracking", "experiment"}


def _choice_fields(schema: type, prefix: str):
    """(key, Enum type) for every choice field of a schema, nested ones included."""
    for f in dataclasses.fields(schema):
        kind = typing.get_type_hints(schema)[f.name]
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            yield f"{prefix}{f.name}", kind
        elif dataclasses.is_dataclass(kind):
            yield from _choice_fields(kind, f"{prefix}{f.name}.")


CHOICE_FIELDS = [([], key, kind) for key, kind in _choice_fields(RootConfig, "")] + [
    ([f"{group}={spec.name}"], key, kind)
    for group, spec in BUILTIN
    for key, kind in _choice_fields(spec.options, f"{group}.")
]


@pytest.mark.parametrize(
    "select,key,kind", CHOICE_FIELDS, ids=[f"{k}{s}" for s, k, _ in CHOICE_FIELDS]
)
def test_a_typo_in_any_choice_field_fails_at_compose(select, key, kind):
    choices = [m.value for m in kind]
    typo = choices[-1][:-1] + "x"
    with pytest.raises(ConfigError) as info:
        compose([*select, f"{key}={typo}"], registry=PM.registry)
    text = str(info.value)
    assert text.startswith(f"{key}={typo} is not allowed. Choices: {', '.join(choices)}.")
    assert f"Did you mean {choices[-1]}?" in text and "Fix: pass e.g." in text
    assert "\n" not in text  # one paragraph


def test_choice_fields_include_the_ones_that_were_checked_by_hand():
    keys = {key for _, key, _ in CHOICE_FIELDS}
    assert {
        "trainer.dtype", "trainer.early_stopping.monitor",
        "sweep.sampler", "sweep.pruner", "model.activation", "data.task",
    } <= keys  # fmt: skip


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def test_the_three_questions_are_experiments():
    assert EXPERIMENTS == ["how_many_epochs", "learning_rate", "which_loss"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_overrides_the_defaults(name, tmp_path, monkeypatch):
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    cfg = compose([f"experiment={name}"], registry=PM.registry)
    assert cfg.trainer.epochs != TrainerConfig().epochs  # the experiment came last
    if "--multirun" in text:  # a sweep: its search space plans without error
        monkeypatch.chdir(tmp_path)
        plan, _, space = make_plan(["--multirun", f"experiment={name}"], PM.registry)
        assert space and plan.n_trials >= len(space)


def test_learning_rate_experiment_switches_the_optimizer_and_grids_the_lr():
    cfg = compose(["experiment=learning_rate"], registry=PM.registry)
    assert cfg.optimizer.name == "sgd" and cfg.sweep.sampler == "grid"
    assert cfg.sweep.params["optimizer.lr"].startswith("choice(")


def _cli(*args):
    env = {**os.environ, "LOSSBENCH_LOAD_PLUGINS": ""}
    r = subprocess.run(
        [sys.executable, "-m", "lossbench", *args], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.slow
def test_help_and_cfg_job_show_the_same_tree():
    help_text = _cli("--help", "optimizer=sgd")
    job = _cli("--cfg", "job", "optimizer=sgd")
    assert (
        help_text.split("== Config ==\nOverride anything in the config (foo.bar=value)\n\n")[1]
        .strip()
        .startswith(job.strip())
    )
    for group in (*GROUPS, "trainer", "tracking", "experiment", "sweep"):
        options = sorted(p.stem for p in (CONF / group).glob("*.yaml")) if group != "sweep" else []
        line = next(ln for ln in help_text.splitlines() if ln.startswith(f"{group}: "))
        assert set(options) <= set(line.split(": ", 1)[1].split(", ")), line
