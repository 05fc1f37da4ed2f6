"""docs/tensorboard.png, made for real: three digits runs (Adam at three learning rates)
recorded by the example tracker plugin (plugins/lossbench-tensorboard, loaded with
--plugins-dir), ``tensorboard --logdir`` on their event files, and headless Chromium (Debian's
``chromium`` and ``chromium-driver``, driven as docs/screenshots.py drives them) showing the
train and validation loss curves in TensorBoard's Time Series tab.

    python docs/tensorboard_screenshot.py            # docs/tensorboard.png
    python docs/tensorboard_screenshot.py --out DIR  # elsewhere

Needs tensorboardX and tensorboard (the test extra). Nothing is left running.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from screenshots import Browser, chromium, clean_env, free_port, stop

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "plugins" / "lossbench-tensorboard"
RATES = ("0.0003", "0.003", "0.03")


def record(logdir: Path, workdir: Path) -> None:
    """One 40-epoch digits run per learning rate, TensorBoard only."""
    for lr in RATES:
        subprocess.run(
            [sys.executable, "-m", "lossbench", "--plugins-dir", str(PLUGIN),
             "tracking=[tensorboard]", f"tracking.tensorboard.logdir={logdir}",
             f"optimizer.lr={lr}", "trainer.epochs=40", "trainer.progress=false"],
            cwd=workdir, env=clean_env(), check=True, capture_output=True,
        )  # fmt: skip


def serve(logdir: Path, log: Path):
    """``tensorboard --logdir`` on a free port; (process, url) once it answers."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port),
         "--host", "127.0.0.1"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return proc, url
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                stop(proc)
                said = log.read_text()[-2000:]
                raise RuntimeError(f"tensorboard did not answer: {said}") from None
            time.sleep(0.5)


def capture(url: str, out: Path, profile: Path) -> Path:
    """The loss curves (tags matching ``_loss``, no smoothing), settings panel closed."""
    browser = Browser(profile)
    try:
        browser.open(f"{url}/?smoothing=0&tagFilter=_loss#timeseries", "val_loss")
        browser.script("const icon = document.querySelector('mat-icon[svgicon=\"close_24px\"]');"
                       "if (icon) { icon.closest('button').click(); }")  # fmt: skip
        time.sleep(6)  # the cards draw their curves once their data has arrived
        return browser.screenshot(out / "tensorboard.png")
    finally:
        browser.quit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    if chromium() is None or shutil.which("chromedriver") is None:
        print("chromium is not installed: apt-get install chromium chromium-driver",
              file=sys.stderr)  # fmt: skip
        return 1
    with tempfile.TemporaryDirectory(prefix="lossbench-tensorboard-") as tmp:
        tmp = Path(tmp)
        record(tmp / "tb", tmp)
        proc, url = serve(tmp / "tb", tmp / "tensorboard.log")
        try:
            print(capture(url, args.out, tmp / "chromium"))
        finally:
            stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
