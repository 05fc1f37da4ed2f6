"""How far lossbench's float32 optimizer steps are from PyTorch's float32 steps, per optimizer
case, before and after plugin interface version 2 (hyperparameters and lr in float64).

For every float32 case of tests/data/torch_reference.json (and the NAdam plugin's golden file) it
prints the worst relative miss of the parameters over the case's steps: of the kernels before
(git revision --before, hp and lr in float32 as version 1 passed them), of today's kernels (hp
and lr in float64), and of torch float32 itself against torch float64 (float32's own rounding,
for scale). No torch needed:

    python benchmarks/float32_drift.py [--before 8b3091a]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

import numpy as np
from _before import BEFORE, ROOT, old_optimizers

from lossbench.builtin.optimizers import OPTIMIZERS

DATA = ROOT / "tests" / "data"


def drift(step, case, params_of, spec, hp_dtype, lr_type, with_scalars) -> tuple[float, float]:
    """Worst |p - torch| / |torch| over the steps of ``case`` (float32 parameters), and worst
    |p - torch| / (|torch| + the largest parameter movement so far)."""
    options = spec.options(**case["options"])
    hp = np.asarray(spec.pack(options), dtype=hp_dtype)
    p = np.array(case["params0"], dtype=np.float32)
    state = np.zeros((spec.state_rows, p.size), dtype=np.float32)
    if spec.init_state is not None:
        spec.init_state(state, options)
    scalars = np.zeros(getattr(spec, "scalar_slots", 0))
    if getattr(spec, "init_scalars", None) is not None:
        spec.init_scalars(scalars, options)
    worst, moved, p0 = 0.0, 0.0, p.astype(np.float64)
    for t, (g, expected) in enumerate(zip(case["grads"], params_of(case), strict=True), 1):
        g = np.array(g, dtype=np.float32)
        extra = (scalars,) if with_scalars else ()
        step(p, g, state, *extra, hp, t, lr_type(options.lr))
        expected = np.array(expected)
        miss = np.abs(p - expected)
        worst = max(worst, float(np.max(miss / np.abs(expected))))
        moved = max(moved, float(np.max(miss / (np.abs(expected) + np.max(np.abs(expected - p0))))))
    return worst, moved


def torch_own(case32, case64) -> float:
    """torch float32 against torch float64 on the same case."""
    a, b = np.array(case32["params"]), np.array(case64["params"])
    return float(np.max(np.abs(a - b) / np.abs(b)))


def nadam_spec():
    path = ROOT / "plugins" / "lossbench-nadam" / "lossbench_nadam.py"
    spec = importlib.util.spec_from_file_location("lossbench_nadam", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.NADAM


def nadam_cases() -> dict:
    """The cases of plugins/lossbench-nadam/tests/golden_nadam.json in torch_reference.json's
    layout, by dtype."""
    path = ROOT / "plugins" / "lossbench-nadam" / "tests" / "golden_nadam.json"
    cases = {"float64": [], "float32": []}
    for c in json.loads(path.read_text())["cases"]:
        cases[c["dtype"]].append({
            "name": c["name"], "optimizer": "nadam", "options": c["options"],
            "params0": c["inputs"]["params"], "grads": c["inputs"]["grads"],
            "params": c["expected"]["params"],
        })  # fmt: skip
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=BEFORE, help="git revision of the version-1 kernels")
    args = ap.parse_args()
    ref = json.loads((DATA / "torch_reference.json").read_text())
    nadam = nadam_cases()
    old = {s.name: s for s in old_optimizers(args.before).OPTIMIZERS}
    new = {s.name: s for s in OPTIMIZERS}
    new["nadam"] = nadam_spec()
    rows = []
    cases64 = {c["name"]: c for c in ref["optimizers"] + nadam["float64"]}
    for case in ref["float32"]["optimizers"] + nadam["float32"]:
        name = case["optimizer"]
        after = drift(new[name].kernel, case, lambda c: c["params"], new[name], np.float64,
                      float, True)  # fmt: skip
        before = None
        if name in old:
            before = drift(old[name].kernel, case, lambda c: c["params"], old[name], np.float32,
                           np.float32, False)  # fmt: skip
        rows.append((case["name"], before, after, torch_own(case, cases64[case["name"]])))
    print(f"float32 drift from torch float32 (worst relative miss over the steps); before = "
          f"{args.before} (hp, lr in float32), after = interface version 2 (hp, lr in float64)")
    print("(moved: relative to |torch| + the largest parameter movement, for parameters near 0)")
    print(f"{'case':40s} {'before':>9s} {'after':>9s} {'ratio':>6s} {'moved:before':>13s} "
          f"{'after':>9s} {'torch32/64':>11s}")
    for name, before, after, own in rows:
        b, bm = (f"{before[0]:9.2e}", f"{before[1]:13.2e}") if before else ("-" * 1, "-")
        ratio = f"{before[0] / after[0]:6.1f}" if before and after[0] > 0 else "-"
        print(f"{name:40s} {b:>9s} {after[0]:9.2e} {ratio:>6s} {bm:>13s} {after[1]:9.2e} "
              f"{own:11.2e}")


if __name__ == "__main__":
    main()
