"""Write golden_lion.json, the values tests/test_lion.py holds the kernel to: Lion in torch ops
(golden_torch.py) after each of 30 steps, three cases, in float64 and float32.

    python tests/make_golden.py --python /path/to/venv-with-torch/bin/python
"""

import argparse
from pathlib import Path

from lossbench.testing import golden

import lossbench_lion

HERE = Path(__file__).resolve().parent
CASES = {
    "lion": {"lr": 0.01},
    "lion_weight_decay": {"lr": 0.01, "weight_decay": 0.5},
    "lion_betas": {"lr": 0.01, "beta1": 0.5, "beta2": 0.9},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", required=True, help="an interpreter that can import torch")
    args = ap.parse_args()
    cases = golden.make_cases(lossbench_lion.LION, list(CASES.values()), names=list(CASES))
    data = golden.generate(lossbench_lion.LION, cases, f"{HERE / 'golden_torch.py'}:lion",
                           python=args.python)  # fmt: skip
    print(f"wrote {golden.write(HERE / 'golden_lion.json', data)} ({data['source']})")


if __name__ == "__main__":
    main()
