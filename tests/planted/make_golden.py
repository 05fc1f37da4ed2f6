"""Write golden_radam.json and golden_poisson_nll.json (torch.optim.RAdam for 30 steps, and
torch.nn.PoissonNLLLoss, in float64 and float32), which tests/test_planted_bugs.py holds the
plugin in radam.py to:

    python tests/planted/make_golden.py --python /path/to/venv-with-torch/bin/python
"""

import argparse
from pathlib import Path

from lossbench.plugins import load_plugin_file
from lossbench.testing import golden

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", required=True, help="an interpreter that can import torch")
    args = ap.parse_args()
    plugin = load_plugin_file(HERE / "radam.py")
    for spec, options in ((plugin.RADAM, [{"lr": 0.01}, {"lr": 0.01, "beta1": 0.8}]),
                          (plugin.POISSON_NLL, [{}])):  # fmt: skip
        compute = f"{HERE / 'golden_torch.py'}:{spec.name}"
        data = golden.generate(spec, golden.make_cases(spec, options), compute, python=args.python)
        print(f"wrote {golden.write(HERE / f'golden_{spec.name}.json', data)}")


if __name__ == "__main__":
    main()
