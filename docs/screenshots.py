"""The README's MLflow screenshots of models, made for real: a fresh ``mlflow server`` on a
sqlite store, a small digits sweep tracked there that registers its best trial's model
(``sweep.register_best=digits-mlp``), then headless Chromium (Debian's ``chromium`` and
``chromium-driver``) renders the registered model's page and the experiment's Models tab into
PNGs.

    python docs/screenshots.py            # docs/mlflow_models.png, docs/mlflow_logged_models.png
    python docs/screenshots.py --out DIR  # elsewhere (tests/test_screenshots.py does)

Nothing is left running: the server is stopped and the temporary store removed at the end.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MODEL = "digits-mlp"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1400,800",
]  # fmt: skip


def chromium() -> str | None:
    """The Chromium binary, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "LOSSBENCH_LOAD_PLUGINS": "", **extra}


def start_server(folder: Path):
    """``mlflow server`` on a sqlite store in ``folder``; (process, url) once it answers."""
    port = free_port()
    log = open(folder / "server.log", "a")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
         f"sqlite:///{folder}/mlflow.db", "--artifacts-destination", str(folder / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                stop(proc)
                raise RuntimeError((folder / "server.log").read_text()[-3000:]) from None
            time.sleep(0.3)


def stop(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


def populate(url: str, workdir: Path, n_trials: int = 6) -> None:
    """A digits sweep tracked on the server, registering its best trial's model."""
    r = subprocess.run(
        [sys.executable, "-m", "lossbench", "--multirun",
         "optimizer.lr=tag(log, interval(1e-3, 3e-2))", "trainer.epochs=15",
         f"sweep.n_trials={n_trials}", "sweep.pruner=none", "sweep.study_name=digits-lr",
         f"sweep.register_best={MODEL}", "sweep.log_models=all", f"tracking.uri={url}",
         "hydra.sweep.dir=sweep"],
        cwd=workdir, env=clean_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])


class Browser:
    """Headless Chromium driven through chromedriver's W3C WebDriver HTTP API (plain JSON over
    HTTP: no Python driver package needed): open a page, wait for text, click, screenshot."""

    def __init__(self, profile: Path) -> None:
        self.port = free_port()
        self.driver = subprocess.Popen(
            [shutil.which("chromedriver"), f"--port={self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(self.base + "/status", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        options = {"binary": chromium(), "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]}
        answer = self._call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": options}}})  # fmt: skip
        self.session = f"/session/{answer['sessionId']}"

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body if body is not None else {}).encode() if method == "POST" else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=120) as reply:
            return json.loads(reply.read())["value"]

    def script(self, code: str, *args):
        return self._call("POST", f"{self.session}/execute/sync", {"script": code, "args": args})

    def open(self, page: str, wait_for: str, timeout: float = 60) -> str:
        """Go to ``page`` and wait until its text shows ``wait_for``; returns the text."""
        self._call("POST", f"{self.session}/url", {"url": page})
        deadline = time.time() + timeout
        while True:
            text = self.script("return document.body ? document.body.innerText : '';")
            if wait_for in text:
                return text
            if time.time() > deadline:
                raise RuntimeError(f"{page} never showed {wait_for!r}: {text[:1000]!r}")
            time.sleep(0.5)

    def close_assistant(self) -> None:
        """MLflow's assistant panel opens by itself on a first visit: close it."""
        self.script("const b = document.querySelector("
                    "'[data-component-id=\"mlflow.assistant.chat_panel.close\"]');"
                    "if (b) { b.click(); }")  # fmt: skip
        time.sleep(1)

    def screenshot(self, path: Path) -> Path:
        png = self._call("GET", f"{self.session}/screenshot")
        path.write_bytes(base64.b64decode(png))
        return path

    def quit(self) -> None:
        try:
            self._call("DELETE", self.session)
        finally:
            stop(self.driver)


def experiment_id(url: str) -> str:
    from mlflow.tracking import MlflowClient  # start-up: only the screenshot run needs it

    return MlflowClient(url).get_experiment_by_name("lossbench").experiment_id


def pages(url: str) -> dict[str, tuple[str, str]]:
    """Every screenshot: file name -> (URL, a text the page shows once it has loaded)."""
    ml = "workflowType=machine_learning"  # the UI's model-training view, not its GenAI one
    return {
        "mlflow_models.png": (f"{url}/#/models/{MODEL}?{ml}", "Version 1"),
        "mlflow_logged_models.png": (
            f"{url}/#/experiments/{experiment_id(url)}/models?{ml}", "Ready"),
    }


def capture(url: str, out: Path, profile: Path) -> dict[str, str]:
    """Screenshots of ``pages`` into ``out``; file name -> the page's text."""
    browser = Browser(profile)
    texts = {}
    try:
        for name, (page, wait_for) in pages(url).items():
            texts[name] = browser.open(page, wait_for)
            browser.close_assistant()
            time.sleep(1)  # the tables settle after their data arrives
            browser.screenshot(out / name)
    finally:
        browser.quit()
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    if chromium() is None or shutil.which("chromedriver") is None:
        print("chromium is not installed: apt-get install chromium chromium-driver",
              file=sys.stderr)  # fmt: skip
        return 2
    with tempfile.TemporaryDirectory(prefix="lossbench-screens-") as tmp:
        tmp = Path(tmp)
        proc, url = start_server(tmp)
        try:
            populate(url, tmp)
            for name in capture(url, args.out, tmp / "chromium"):
                print(args.out / name)
        finally:
            stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
