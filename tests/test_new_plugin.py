"""``python -m lossbench new-plugin`` and ``python -m lossbench check``, as an author meets them:
lossbench installed (not editable) into a fresh venv, one package generated for each kind of
component, the four installed with pip, ``check`` run against them as installed (exit 0, the
report), their own tests (the kit and the golden values) passing there, and a kernel given a bug
failing ``check`` with exit code 1 and the message that names it."""

import re

import pytest
from test_example_plugins import fresh_venv, pip_install

from lossbench.authoring.new_plugin import KINDS, write_plugin

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def author(tmp_path_factory):
    """The venv, with a package per kind written and installed: demo_loss by the command, the
    others by the function behind it."""
    run = fresh_venv(tmp_path_factory.mktemp("plugin-author"))
    r = run("-m", "lossbench", "new-plugin", "demo_loss", "--kind", "loss")
    assert r.returncode == 0, r.stderr
    assert "wrote " in r.stdout and "python -m lossbench check demo_loss" in r.stdout
    for kind in ("optimizer", "model", "dataset"):
        write_plugin(f"demo_{kind}", kind, run.cwd)
    run.packages = {kind: run.cwd / f"lossbench-demo-{kind}" for kind in KINDS}
    pip_install(run.python, *run.packages.values())
    return run


def test_the_generated_packages_pass_check_as_installed(author):
    r = author("-m", "lossbench", "check", *(f"demo_{kind}" for kind in KINDS))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 failed" in r.stdout.splitlines()[-1], r.stdout[-500:]
    for kind, group in (("loss", "loss"), ("optimizer", "optimizer"), ("model", "model"),
                        ("dataset", "data")):  # fmt: skip
        assert re.search(rf"^ok    {group}-demo_{kind}-trains_small_mlp ", r.stdout, re.M)
    assert "optimizer-demo_optimizer-step_cost_does_not_grow_with_t" in r.stdout
    # the model's only option changes its shape: listed as skipped, with the reason
    assert re.search(r"^skip  model-demo_model-each_hyperparameter_takes_effect .*\n .*no change "
                     r"of hidden reaches its kernels as a value .*alters its shape", r.stdout,
                     re.M), r.stdout  # fmt: skip


def test_the_generated_packages_own_tests_pass_kit_and_golden_values(author):
    suites = [str(path / "tests") for path in author.packages.values()]
    r = author("-m", "pytest", "-q", "-p", "no:cacheprovider", *suites)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert re.search(r"\b(4[0-9]|5[0-9]) passed", r.stdout), r.stdout[-500:]
    assert "test_golden_values[" in author("-m", "pytest", "--collect-only", "-q", suites[1],
                                           "-p", "no:cacheprovider").stdout  # fmt: skip


def test_check_fails_with_exit_1_when_the_kernel_gets_a_bug(author):
    source = (author.packages["loss"] / "lossbench_demo_loss.py").read_text()
    bugged = source.replace("grad[i, j] = d / beta / n", "grad[i, j] = 2.0 * d / beta / n")
    assert bugged != source
    path = author.cwd / "demo_bugged.py"
    path.write_text(bugged.replace('name="demo_loss"', 'name="demo_bugged"'))
    r = author("-m", "lossbench", "check", str(path), "--fast")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    assert "(fast mode: float64 only, no bounds-checked compile)" in r.stdout.splitlines()[0]
    assert re.search(r"^FAIL  loss-demo_bugged-gradient_matches_finite_differences", r.stdout, re.M)


def test_mistakes_are_one_paragraph_and_exit_2(author, tmp_path):
    for args, said in (
        (["check", "no_such_plugin"], "check no_such_plugin: no installed plugin, module or file"),
        (["new-plugin", "adam", "--kind", "optimizer"], "optimizer=adam is a built-in"),
        (["new-plugin", "Bad-Name"], "NAME must be a lower-case Python identifier"),
        (["new-plugin", "x", "--kind", "metric"], "--kind metric is not a kind of component"),
        (["new-plugin", "demo_loss"], "exists: new-plugin writes only into a new directory"),
    ):
        r = author("-m", "lossbench", *args)
        assert r.returncode == 2 and said in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
