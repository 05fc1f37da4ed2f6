"""What numba's disk cache recompiles after a plugin file is edited: every kernel in that file, or
only the edited one; and after the old bytes are restored. docs/plugins.md ("Kernels") states the
rule this measures.

Two layouts of the same two kernels (a loss and an optimizer): both in one module, and one module
each. For each, a fresh process loads both kernels in both dtypes (cold: compiles and caches),
then again (warm: loads), then the loss kernel's file is edited (a comment changed) and a fresh
process loads both again, then the old bytes are written back and a fresh process loads both
once more. Each line says which kernels compiled and how long loading took:

    python benchmarks/kernel_cache.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOSS = '''
@njit(cache=True)
def loss_kernel(pred, target, hp, grad):
    # the loss kernel: mean squared error
    n = pred.size
    total = 0.0
    for i in range(pred.shape[0]):
        for j in range(pred.shape[1]):
            d = pred[i, j] - target[i, j]
            total += d * d
            grad[i, j] = 2.0 * d / n
    return total / n
'''
OPTIMIZER = '''
@njit(cache=True)
def step_kernel(p, g, state, scalars, hp, t, lr):
    f = p.dtype.type
    mu, step = f(hp[0]), f(lr)
    for i in range(p.shape[0]):
        state[0, i] = mu * state[0, i] + g[i]
        p[i] -= step * state[0, i]
'''
HEADER = "from numba import njit\n"
# a fresh process: load (or compile) both kernels for their canonical signatures, both dtypes
PROBE = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
start = time.perf_counter()
from lossbench.kernels import cache_counts, kernel_ref
import_seconds = time.perf_counter() - start
modules = json.loads(sys.argv[2])
result = {}
for role, (module, name) in modules.items():
    kernel = getattr(__import__(module), name)
    start = time.perf_counter()
    for dtype in ("float32", "float64"):
        kernel_ref(kernel, role, dtype, owner=name)
    result[name] = {**cache_counts(kernel), "seconds": time.perf_counter() - start}
print(json.dumps(result))
"""


def probe(folder: Path, modules: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE, str(folder), json.dumps(modules)],
                       capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(r.stdout)


def layout(folder: Path, together: bool) -> tuple[dict, Path]:
    """Write the kernels; the modules to probe and the file holding the loss kernel."""
    if together:
        (folder / "both.py").write_text(HEADER + LOSS + OPTIMIZER)
        return {"loss": ("both", "loss_kernel"), "optimizer": ("both", "step_kernel")}, (
            folder / "both.py")  # fmt: skip
    (folder / "loss_mod.py").write_text(HEADER + LOSS)
    (folder / "step_mod.py").write_text(HEADER + OPTIMIZER)
    return {"loss": ("loss_mod", "loss_kernel"), "optimizer": ("step_mod", "step_kernel")}, (
        folder / "loss_mod.py")  # fmt: skip


def line(what: str, result: dict) -> str:
    compiled = [n for n, r in result.items() if r["compiled"]]
    seconds = ", ".join(f"{n} {r['seconds']:.2f} s" for n, r in result.items())
    return f"  {what:34s} compiled: {', '.join(compiled) or 'nothing':26s} ({seconds})"


def main() -> None:
    for together in (True, False):
        print("both kernels in one module" if together else "one module per kernel")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            modules, edited = layout(folder, together)
            print(line("first process (cold cache)", probe(folder, modules)))
            print(line("second process (warm cache)", probe(folder, modules)))
            old = edited.read_bytes()
            time.sleep(0.01)  # a new modification time
            edited.write_text(old.decode().replace("mean squared error", "mean squared error!"))
            print(line("after editing the loss kernel", probe(folder, modules)))
            edited.write_bytes(old)
            print(line("after restoring the old bytes", probe(folder, modules)))


if __name__ == "__main__":
    main()
