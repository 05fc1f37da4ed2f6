"""The README's model screenshots (docs/screenshots.py) against a real ``mlflow server``:
headless Chromium shows the registered model's page (its version, the alias ``best``, the
study and trial tags) and the experiment's Models tab (a logged model per trial, the best one
linked to its registered version). Skips, saying why, where Chromium is not installed."""

import importlib.util
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent.parent / "docs" / "screenshots.py"


def load_script():
    spec = importlib.util.spec_from_file_location("screenshots", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    shutil.which("chromium") is None or shutil.which("chromedriver") is None,
    reason="headless Chromium is not installed (Debian: apt-get install chromium chromium-driver)",
)
def test_screenshots_show_the_registered_model_and_the_models_tab(tmp_path):
    shots = load_script()
    proc, url = shots.start_server(tmp_path)
    try:
        shots.populate(url, tmp_path, n_trials=2)
        texts = shots.capture(url, tmp_path, tmp_path / "chromium")
    finally:
        shots.stop(proc)
    registered = texts["mlflow_models.png"]
    assert shots.MODEL in registered and "Version 1" in registered and "best" in registered
    assert "lossbench.study" in registered and "lossbench.trial" in registered
    tab = texts["mlflow_logged_models.png"]
    assert tab.count("Ready") == 2 and shots.MODEL in tab
    for name in texts:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 20_000
