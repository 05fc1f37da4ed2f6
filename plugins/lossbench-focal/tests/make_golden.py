"""Write golden_focal.json and golden_binary_focal.json, the values tests/test_focal.py holds the
kernels to: the losses and their gradients computed by torch (golden_torch.py), in float64 and
float32.

    python tests/make_golden.py --python /path/to/venv-with-torch/bin/python
"""

import argparse
from pathlib import Path

from lossbench.testing import golden

import lossbench_focal

HERE = Path(__file__).resolve().parent
CASES = {
    "focal": [{}, {"gamma": 0.5, "alpha": 0.25}, {"gamma": 0.0}],
    "binary_focal": [{}, {"gamma": 0.5, "alpha": 0.75}, {"gamma": 0.0, "alpha": None}],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", required=True, help="an interpreter that can import torch")
    args = ap.parse_args()
    for spec in lossbench_focal.LOSSES:
        cases = golden.make_cases(spec, CASES[spec.name])
        data = golden.generate(spec, cases, f"{HERE / 'golden_torch.py'}:{spec.name}",
                               python=args.python)  # fmt: skip
        print(f"wrote {golden.write(HERE / f'golden_{spec.name}.json', data)} ({data['source']})")


if __name__ == "__main__":
    main()
