"""The command line, run as users run it: python -m lossbench ..."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lossbench.cli import COMMANDS, main
from lossbench.cli.commands import unknown_command
from lossbench.cli.probes import lr_find_parser
from lossbench.errors import LossbenchError

pytestmark = pytest.mark.slow


def lossbench(*args, cwd, env=None, timeout=120):
    full_env = {**os.environ, "LOSSBENCH_LOAD_PLUGINS": "", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lossbench", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_run_writes_outputs_and_summary(tmp_path):
    r = lossbench("tracking=none", "trainer.epochs=3", "data=iris", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "finished after 3 epochs" in r.stdout and "best epoch" in r.stdout
    (run_dir,) = list((tmp_path / "outputs").glob("*/*"))
    assert f"outputs: {run_dir}" in r.stdout
    names = {p.name for p in run_dir.iterdir()}
    assert {"history.csv", "model.npz", "loss_curve.png", "summary.json", ".hydra"} <= names
    resolved = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "name: iris" in resolved and "epochs: 3" in resolved
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 3


@pytest.mark.parametrize(
    "args,message",
    [
        (["loss=focal"], "loss='focal' is not a known loss. Available: bce, cross_entropy"),
        (["trainer.epochs=abc"], "trainer.epochs=abc"),
        (["data=digits", "loss=bce"], "loss=bce is for two-class data"),
        (["data=csv", "data.path=missing.csv"], "data.path='missing.csv': no such file"),
        (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 is not allowed"),
    ],
)
def test_user_mistakes_exit_2_without_traceback_or_leftovers(tmp_path, args, message):
    r = lossbench("tracking=none", "trainer.epochs=2", *args, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not list(tmp_path.glob("outputs/*/*")), "a failed start left a run directory"


def test_plugins_command_lists_builtins_with_components(tmp_path):
    r = lossbench("plugins", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    losses = rows["lossbench.builtin.losses"]
    assert losses["components"]["loss"] == ["bce", "cross_entropy", "huber", "mae", "mse"]
    assert losses["hooks"] == ["register_losses"] and losses["version"]
    assert "on_epoch_end" in rows["lossbench.builtin.early_stopping"]["hooks"]
    table = lossbench("plugins", cwd=tmp_path)
    assert "lossbench.builtin.optimizers" in table.stdout


def test_broken_plugin_file_names_itself_and_the_fix(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "broken.py").write_text("import no_such_module_xyz\n")
    r = lossbench("--plugins-dir", str(plugins), "tracking=none", "trainer.epochs=1", cwd=tmp_path)
    assert r.returncode == 2
    assert "broken.py failed to import: ModuleNotFoundError" in r.stderr
    assert "LOSSBENCH_DISABLE_PLUGINS=broken" in r.stderr
    r = lossbench(
        "--plugins-dir",
        str(plugins),
        "tracking=none",
        "trainer.epochs=1",
        "data=iris",
        cwd=tmp_path,
        env={"LOSSBENCH_DISABLE_PLUGINS": "broken"},
    )
    assert r.returncode == 0, r.stderr


def test_wheel_install_outside_the_repo(tmp_path):
    """pip install . (not editable) ships the configs: python -m lossbench works elsewhere."""
    repo = Path(__file__).resolve().parents[1]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # reuse this environment's dependencies instead of downloading them again
    site = next(p for p in sys.path if p.endswith("site-packages"))
    venv_site = next((venv / "lib").glob("python*/site-packages"))
    (venv_site / "deps.pth").write_text(site + "\n")
    py = venv / "bin" / "python"
    r = subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", str(repo)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0 and "hatchling" in r.stderr:
        r = subprocess.run(
            [str(py), "-m", "pip", "install", "--no-deps", "-q", str(repo)],
            capture_output=True,
            text=True,
        )
    assert r.returncode == 0, r.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "LOSSBENCH_LOAD_PLUGINS": "", "PYTHONPATH": ""}
    run = subprocess.run(
        [str(py), "-m", "lossbench", "tracking=none", "trainer.epochs=2", "data=iris"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "finished after 2 epochs" in run.stdout
    where = subprocess.run(
        [str(py), "-c", "import lossbench.config as c; print(c.config_dir())"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert str(venv) in where.stdout, "configs must come from the installed wheel"


COUNT_COMPOSES = """
import sys
from hydra._internal.hydra import Hydra
calls = []
compose_config = Hydra.compose_config
def counted(self, *args, **kwargs):
    calls.append(kwargs.get("run_mode"))
    return compose_config(self, *args, **kwargs)
Hydra.compose_config = counted
from lossbench.cli import main
try:
    main(sys.argv[1:])
finally:
    print("composed", len(calls), file=sys.stderr)
"""


def test_a_run_composes_its_config_once(tmp_path):
    """hydra.main composed three times for one run (the check, the mode, the run)."""
    r = subprocess.run(
        [sys.executable, "-c", COUNT_COMPOSES, "tracking=none", "trainer.epochs=1", "data=iris",
         "trainer.plots=false", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env={**os.environ, "LOSSBENCH_LOAD_PLUGINS": ""}, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "composed 1" in r.stderr, r.stderr
    assert (tmp_path / "run" / "summary.json").is_file()


def test_composing_once_writes_what_hydra_main_writes(tmp_path):
    """The one-compose path and hydra.main's (taken with any flag, here --config-name) leave
    the same .hydra/ files and log, apart from the run directory's own name."""
    common = ["tracking=none", "trainer.epochs=1", "data=iris", "trainer.plots=false",
              "optimizer.lr=0.01"]  # fmt: skip
    runs = {}
    for name, extra in (("once", []), ("main", ["--config-name=config"])):
        r = lossbench(*extra, *common, f"hydra.run.dir={tmp_path / name}", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        runs[name] = tmp_path / name
    for f in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        once = (runs["once"] / ".hydra" / f).read_text().replace(str(runs["once"]), "DIR")
        main = (runs["main"] / ".hydra" / f).read_text().replace(str(runs["main"]), "DIR")
        assert once == main, f
    assert sorted(p.name for p in runs["once"].iterdir()) == sorted(
        p.name for p in runs["main"].iterdir()
    )


# ---------------------------------------------------------------------------------------------
# the table of subcommands: each one's usage and --help come from its parser


def _subcommands_with_parsers():
    return [name for name, command in COMMANDS.items() if command.parser is not None]


@pytest.mark.parametrize("name", _subcommands_with_parsers())
def test_every_subcommand_has_a_generated_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m lossbench {name} [-h]"), out
    assert "options:" in out


@pytest.mark.parametrize("name", _subcommands_with_parsers())
@pytest.mark.parametrize("bad", [["--bogus"], ["--bogus=1"], ["-x", "1"]])
def test_every_subcommand_refuses_an_unknown_flag_in_one_paragraph(name, bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, *bad])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and "\n" not in err, err
    assert err.startswith(f"lossbench: error: {name} does not take {bad[0]!r}; its options")
    assert "Fix: " in err and f"Usage: python -m lossbench {name} " in err
    assert "usage:" not in err  # never argparse's own usage line


def test_subcommand_flags_keep_their_spellings(capsys):
    """``--flag VALUE`` and ``--flag=VALUE`` mean the same; a value missing or of the wrong
    type is named with the flag."""
    parser = lr_find_parser()
    one = parser.parse(["--steps", "50", "loss=mse", "--end-lr=0.5", "data=iris"])
    assert (one.steps, one.end_lr, one.overrides) == (50, 0.5, ["loss=mse", "data=iris"])
    two = parser.parse(["--plugins-dir=plug", "data=iris", "--output-dir", "out"])
    assert (two.plugins_dir, two.output_dir, two.overrides) == ("plug", "out", ["data=iris"])
    with pytest.raises(LossbenchError, match="lr_find --steps 'x' is not a valid int. Fix:"):
        parser.parse(["--steps", "x"])
    with pytest.raises(LossbenchError, match="lr_find --beta needs a value. Fix:"):
        parser.parse(["data=iris", "--beta"])


@pytest.mark.parametrize("typed, meant", [("plugin", "plugins"), ("chek", "check"),
                                          ("lr-find", "lr_find"), ("Warmup", "warmup"),
                                          ("storage_proxy", "storage-proxy")])  # fmt: skip
def test_a_mistyped_subcommand_is_named_with_the_closest_one(typed, meant, capsys):
    """Not Hydra's override grammar error: a bare first word is no override, so it is taken
    for a subcommand, refused before any plugin loads."""
    with pytest.raises(SystemExit) as exit_:
        main([typed, "--steps", "20"])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and "\n" not in err, err
    assert err.startswith(f"lossbench: error: unknown command {typed!r}. Did you mean {meant!r}?")
    assert f"Choices: {', '.join(COMMANDS)}. Fix: python -m lossbench {meant} ...; or, " in err
    assert "override grammar" not in err


def test_a_bare_word_far_from_every_subcommand_lists_them(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["optimizer", "loss=bce"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Did you mean" not in err and "\n" not in err
    assert err.startswith("lossbench: error: unknown command 'optimizer'. Choices: plugins, ")
    assert "Fix: put one of those first; or, for a run, make every word an override" in err


@pytest.mark.parametrize("word", ["loss=bce", "+x=1", "++x=1", "~x", "~x=1", "hydra/launcher=basic",
                                  "-m", "--multirun", "--cfg", "-c", "--help", "-h", "-cp",
                                  "--config-name=other", "--info", "-sc", "--plugins-dir", ""])
def test_every_first_word_a_run_takes_is_left_to_hydra(word):
    assert unknown_command(word) is None


def test_hydras_help_ends_with_the_table_of_subcommands(tmp_path):
    r = lossbench("--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "== Configuration groups ==" in r.stdout  # Hydra's own help, unchanged above
    listed = r.stdout.split("Subcommands (")[1]
    for name, command in COMMANDS.items():
        assert f"  {name:<14} {command.help}\n" in listed
