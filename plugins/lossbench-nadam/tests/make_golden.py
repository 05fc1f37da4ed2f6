"""Write golden_nadam.json, the values tests/test_nadam.py holds the kernel to: torch.optim.NAdam
(golden_torch.py) after each of 30 steps, five cases, in float64 and float32.

    python tests/make_golden.py --python /path/to/venv-with-torch/bin/python

This runs here (lossbench draws the inputs and writes the file) and asks the other interpreter
only for torch's numbers, so the plugin's tests need no torch.
"""

import argparse
from pathlib import Path

import numpy as np
from lossbench.testing import golden

import lossbench_nadam

HERE = Path(__file__).resolve().parent
CASES = {
    "nadam": {"lr": 0.01},
    "nadam_weight_decay": {"lr": 0.01, "weight_decay": 0.1},
    "nadam_decoupled_weight_decay": {"lr": 0.01, "weight_decay": 0.1,
                                     "decoupled_weight_decay": True},
    "nadam_momentum_decay_betas": {"lr": 0.01, "momentum_decay": 0.05, "beta1": 0.8,
                                   "beta2": 0.99},
    "nadam_eps": {"lr": 0.01, "eps": 0.1},
}  # fmt: skip
P0 = [0.5, -1.25, 0.0, 2.0, -0.3, 1e-3, 3.75]  # a 0 and a near-0 entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", required=True, help="an interpreter that can import torch")
    args = ap.parse_args()
    grads = np.random.default_rng(20261202).normal(scale=1.5, size=(30, len(P0))).round(6)
    cases = golden.make_cases(lossbench_nadam.NADAM, list(CASES.values()), names=list(CASES),
                              inputs={"params": P0, "grads": grads})  # fmt: skip
    data = golden.generate(lossbench_nadam.NADAM, cases, f"{HERE / 'golden_torch.py'}:nadam",
                           python=args.python)  # fmt: skip
    print(f"wrote {golden.write(HERE / 'golden_nadam.json', data)} ({data['source']})")


if __name__ == "__main__":
    main()
