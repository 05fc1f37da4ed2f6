"""Write golden_residual_mlp.json, the values test_single_file.py holds residual_mlp.py to: its
outputs and parameter gradients as torch computes them (golden_torch.py), in float64 and
float32.

    python tests/make_golden.py --python /path/to/venv-with-torch/bin/python
"""

import argparse
from pathlib import Path

from lossbench.plugins import load_plugin_file
from lossbench.testing import golden

HERE = Path(__file__).resolve().parent
CASES = [{}, {"width": 5, "blocks": 3, "residual_scale": 0.5}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", required=True, help="an interpreter that can import torch")
    args = ap.parse_args()
    spec = load_plugin_file(HERE.parent / "residual_mlp.py").RESIDUAL_MLP
    cases = golden.make_cases(spec, CASES)
    data = golden.generate(spec, cases, f"{HERE / 'golden_torch.py'}:residual_mlp",
                           python=args.python)  # fmt: skip
    print(f"wrote {golden.write(HERE / 'golden_residual_mlp.json', data)} ({data['source']})")


if __name__ == "__main__":
    main()
