"""Golden values: a component held to values stored in a file, computed once by something else
(PyTorch, or any callable) in another environment, so that a bug written into both the kernel and
its NumPy reference (a bias correction missing in both) still fails.

A golden file is JSON (diffable in review, float64 exact through ``repr``, nothing unpickled)::

    {"lossbench_golden": 1, "component": "optimizer.nadam", "source": "torch 2.13.0+cpu",
     "cases": [{"name": "defaults", "dtype": "float64", "options": {...},
                "inputs": {"params": [...], "grads": [[...], ...]},
                "expected": {"params": [[...], ...]}}, ...]}

What a case holds, by kind: a loss ``inputs`` {pred, target}, ``expected`` {loss, grad}; an
optimizer {params (initial), grads (one row per step)} -> {params (after every step)}, with the
learning rate ``options["lr"]``; a model {params (flat), tensors (the same by name), x, dout} ->
{out, grads (flat, or by tensor name)}, where grads = d sum(out * dout) / d params; a dataset
{seed} -> {X, y}. float32 cases hold their inputs rounded to float32 (the float64 spelling of a
float32 number), and the source computes in float32.

Making them (``generate``): ``make_cases`` draws the inputs from a seed for a component and a
list of hyperparameter dicts, in float64 and float32; ``compute`` is a callable ``f(case) ->
expected`` run here, or ``"FILE.py:FUNCTION"`` run by another interpreter (``python=``, e.g. a
venv with torch: it needs only numpy there, not lossbench), which gets each case with its inputs
as NumPy arrays and returns the expected values; ``write`` stores the file.

Holding a component to them (``check_golden``, ``parametrize_golden``): the kernel is called as
a run calls it (arrays in the case's dtype, ``hp`` and ``lr`` in float64) and so is the NumPy
reference. The tolerance rule (docs/plugins.md, "Matching PyTorch"): ``|got - stored| <= rtol
x scale`` with rtol 1e-10 in float64 and 1e-6 in float32, where scale is ``|stored|`` plus the
largest ``|stored|`` of the same array (an entry near 0 has no meaningful relative error of its
own); for an optimizer's parameters, ``|stored|`` plus the parameters' largest movement so far.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lossbench.specs import KINDS
from lossbench.testing._base import (
    ConformanceError,
    _compare,
    _Miss,
    _packed,
    index_slot,
)
from lossbench.testing.losses import _loss_batch
from lossbench.testing.models import tensor_slot

FORMAT = 1
RTOL = {"float64": 1e-10, "float32": 1e-6}
_GROUP = {cls: group for group, cls in KINDS.items()}
MODEL_SHAPE = {"n_in": 3, "n_out": 2, "rows": 4}  # the model the generated cases build


def group_of(spec) -> str:
    """``loss``, ``optimizer``, ``model`` or ``data``."""
    return _GROUP[type(spec)]


# ---------------------------------------------------------------------------------------------
# making golden values


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.floating | np.integer):
        return value.item()
    return value


def _inputs(spec, options, rng, steps: int) -> dict:
    group = group_of(spec)
    if group == "loss":
        pred, target = _loss_batch(spec, rng, np.float64, rows=5, cols=3)
        return {"pred": pred, "target": target}
    if group == "optimizer":
        params = rng.normal(size=7).round(6)
        return {"params": params, "grads": rng.normal(scale=1.5, size=(steps, 7)).round(6)}
    if group == "model":
        layout = spec.build(options, MODEL_SHAPE["n_in"], MODEL_SHAPE["n_out"])
        params = np.empty(layout.n_params)
        layout.init(rng, params)
        rows, n_in, n_out = MODEL_SHAPE["rows"], MODEL_SHAPE["n_in"], MODEL_SHAPE["n_out"]
        x, dout = rng.normal(size=(rows, n_in)), rng.normal(size=(rows, n_out))
        return {"params": params, "tensors": layout.views(params), "x": x, "dout": dout}
    return {"seed": int(rng.integers(1 << 16))}


def _rounded(inputs: dict, dtype: str):
    if dtype == "float64":
        return inputs
    return {k: _rounded(v, dtype) if isinstance(v, dict) else
            (np.asarray(v, np.float32).astype(np.float64) if isinstance(v, np.ndarray) else v)
            for k, v in inputs.items()}  # fmt: skip


def make_cases(spec, options: list[dict], *, names: list[str] | None = None, steps: int = 30,
               dtypes=("float64", "float32"), seed: int = 0, inputs: dict | None = None) -> list:
    """One case per dict of options and dtype, inputs drawn from ``seed`` (``inputs``
    replaces some, e.g. ``{"params": [...]}``); ``expected`` is filled by ``generate``."""
    cases = []
    for k, given in enumerate(options):
        filled = spec.options(**given)
        drawn = _inputs(spec, filled, np.random.default_rng([seed, k]), steps)
        drawn.update({key: np.asarray(v, np.float64) for key, v in (inputs or {}).items()})
        name = names[k] if names else "_".join(f"{a}_{b}" for a, b in given.items()) or "defaults"
        for dtype in dtypes:
            cases.append({"name": name, "dtype": dtype,
                          "options": _plain(dataclasses.asdict(filled)),
                          "inputs": _rounded(drawn, dtype)})  # fmt: skip
    return cases


# run by the other interpreter: numpy and the standard library only
_BOOTSTRAP = r"""
import importlib.util, json, sys
import numpy as np
path, name = sys.argv[1], sys.argv[2]
spec = importlib.util.spec_from_file_location("golden_source", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
def arrays(v):
    if isinstance(v, dict):
        return {k: arrays(x) for k, x in v.items()}
    return np.asarray(v, dtype=np.float64) if isinstance(v, list) else v
def plain(v):
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if hasattr(v, "tolist"):
        return v.tolist()
    return [plain(x) for x in v] if isinstance(v, (list, tuple)) else v
cases = json.load(sys.stdin)
out = [plain(getattr(module, name)({**c, "inputs": arrays(c["inputs"])})) for c in cases]
source = module.source() if hasattr(module, "source") else "python " + sys.version.split()[0]
json.dump({"expected": out, "source": source}, sys.stdout)
"""


def _arrays(value):
    if isinstance(value, dict):
        return {k: _arrays(v) for k, v in value.items()}
    return np.asarray(value, dtype=np.float64) if isinstance(value, list) else value


def _run_elsewhere(compute: str, cases: list, python: str) -> tuple[list, str]:
    path, _, function = compute.rpartition(":")
    if not path or not Path(path).is_file():
        raise ValueError(f"compute={compute!r}: expected 'FILE.py:FUNCTION' naming a file")
    r = subprocess.run(
        [python, "-c", _BOOTSTRAP, str(Path(path).resolve()), function],
        input=json.dumps(_plain(cases)), capture_output=True, text=True,
    )  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"{python} could not compute the golden values:\n{r.stderr[-3000:]}")
    answer = json.loads(r.stdout)
    return answer["expected"], answer["source"]


def generate(spec, cases: list, compute: Callable | str, *, python: str | None = None,
             source: str | None = None) -> dict:
    """The golden file's content: ``cases`` (from ``make_cases``) with ``expected`` filled by
    ``compute``: a callable run here, or ``"FILE.py:FUNCTION"`` run by the interpreter
    ``python`` (default: this one). A module there may define ``source() -> str`` (e.g.
    ``f"torch {torch.__version__}"``) to say where the values come from."""
    if callable(compute):
        expected = [_plain(compute({**c, "inputs": _arrays(_plain(c["inputs"]))})) for c in cases]
        found = source or getattr(compute, "__module__", "python")
    else:
        expected, found = _run_elsewhere(compute, cases, python or sys.executable)
    filled = [{**_plain(c), "expected": e} for c, e in zip(cases, expected, strict=True)]
    return {"lossbench_golden": FORMAT, "component": f"{group_of(spec)}.{spec.name}",
            "source": source or found, "cases": filled}  # fmt: skip


def write(path, data: dict) -> Path:
    """Write ``data`` (from ``generate``) to ``path``, one line per innermost list."""
    text = json.dumps(data, indent=1)
    text = re.sub(r"\[\s*([^\[\]{}\"]*?)\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]",
                  text)  # fmt: skip
    path = Path(path)
    path.write_text(text + "\n")
    return path


def load(path) -> dict:
    """A golden file, checked to be one."""
    data = json.loads(Path(path).read_text())
    if data.get("lossbench_golden") != FORMAT:
        raise ValueError(f"{path} is not a lossbench golden file (format {FORMAT})")
    for case in data.get("cases", []):  # a file written when the key was "hparams"
        if "hparams" in case and "options" not in case:
            case["options"] = case.pop("hparams")
    return data


# ---------------------------------------------------------------------------------------------
# holding a component to them


def _largest(expected) -> float:
    """The largest |stored| of an array (what an entry near 0 is measured against)."""
    a = np.abs(np.asarray(expected, dtype=np.float64))
    return float(a.max()) if a.size else 0.0


def _loss_results(spec, case, use_kernel):
    dtype, e = case["dtype"], case["expected"]
    pred, target = (np.asarray(case["inputs"][k], dtype) for k in ("pred", "target"))
    hp = _packed(spec, spec.options(**case["options"]))
    if use_kernel:
        grad = np.full_like(pred, np.nan)
        value = spec.kernel(pred, target, hp, grad)
    else:
        value, grad = spec.reference(pred, target, hp)
    yield "loss values", value, e["loss"], 0.0, None
    yield "gradients", grad, e["grad"], _largest(e["grad"]), index_slot("grad")


def _optimizer_results(spec, case, use_kernel):
    dtype = case["dtype"]
    options = spec.options(**case["options"])
    hp, lr = _packed(spec, options), float(options.lr)
    p = np.array(case["inputs"]["params"], dtype=dtype)
    p0 = p.astype(np.float64)
    state = np.zeros((spec.state_rows, p.size), dtype=dtype)
    if spec.init_state is not None:
        spec.init_state(state, options)
    scalars = np.zeros(spec.scalar_slots)
    if spec.init_scalars is not None:
        spec.init_scalars(scalars, options)
    fn = spec.kernel if use_kernel else spec.reference
    moved = 0.0
    for t, (g, e) in enumerate(zip(case["inputs"]["grads"], case["expected"]["params"],
                                   strict=True), start=1):  # fmt: skip
        fn(p, np.array(g, dtype=dtype), state, scalars, hp, t, lr)
        e = np.asarray(e)
        moved = max(moved, float(np.max(np.abs(e - p0))))
        yield f"parameters after step {t}", p.copy(), e, moved, index_slot("params")


def _flat_grads(layout, grads) -> np.ndarray:
    if not isinstance(grads, dict):
        return np.asarray(grads, dtype=np.float64)
    flat = np.zeros(layout.n_params)
    for name, values in grads.items():
        off, shape = layout.tensors[name]
        flat[off : off + int(np.prod(shape))] = np.asarray(values, np.float64).ravel()
    return flat


def _model_results(spec, case, use_kernel):
    dtype, inputs, e = case["dtype"], case["inputs"], case["expected"]
    x, dout = (np.asarray(inputs[k], dtype) for k in ("x", "dout"))
    layout = spec.build(spec.options(**case["options"]), x.shape[1], dout.shape[1])
    params, hp = np.asarray(inputs["params"], dtype), layout.kernel_hp()
    if use_kernel:
        work = np.full(layout.workspace(len(x)), np.nan, dtype)
        out, grads = np.full(dout.shape, np.nan, dtype), np.full(len(params), np.nan, dtype)
        spec.forward(params, layout.layout, hp, x, work, out)
        spec.backward(params, layout.layout, hp, x, work, dout, grads)
    else:
        out = spec.reference_forward(params, layout.layout, hp, x)
        grads = spec.reference_backward(params, layout.layout, hp, x, dout)
    expected_grads = _flat_grads(layout, e["grads"])
    yield "outputs", out, e["out"], _largest(e["out"]), index_slot("out")
    yield "gradients", grads, expected_grads, _largest(expected_grads), tensor_slot(layout)


def _data_results(spec, case, use_kernel):
    data = spec.load(spec.options(**case["options"]), int(case["inputs"]["seed"]))
    for name in ("X", "y"):
        e = np.asarray(case["expected"][name], dtype=np.float64)
        yield name, np.asarray(getattr(data, name)), e, _largest(e), index_slot(name)


_RESULTS = {"loss": _loss_results, "optimizer": _optimizer_results, "model": _model_results,
            "data": _data_results}  # fmt: skip
_REFERENCES = {"loss": ("reference",), "optimizer": ("reference",),
               "model": ("reference_forward", "reference_backward"), "data": ()}  # fmt: skip


def _runs(spec, group: str, reference: bool) -> list[tuple[str, bool]]:
    """(how a miss names it, use_kernel) for what is held to the values."""
    if group == "data":
        return [("its load()", True)]
    runs = [] if spec.numpy_only else [("the kernel", True)]
    if (reference or spec.numpy_only) and all(getattr(spec, r) is not None
                                              for r in _REFERENCES[group]):  # fmt: skip
        runs.append(("the NumPy reference", False))
    return runs


@dataclasses.dataclass(frozen=True)
class GoldenCase:
    """One case of a golden file for one component; call it to check (``ConformanceError``)."""

    spec: object = dataclasses.field(repr=False)
    case: dict = dataclasses.field(repr=False)
    file: Path
    source: str
    rtol: float | None = None
    reference: bool = True

    @property
    def id(self) -> str:
        return f"{self.case['name']}-{self.case['dtype']}"

    def __call__(self) -> None:
        group, dtype = group_of(self.spec), self.case["dtype"]
        rtol = self.rtol if self.rtol is not None else RTOL[dtype]
        near = "the largest movement so far" if group == "optimizer" else "the array's largest"
        misses = []
        for who, use_kernel in _runs(self.spec, group, self.reference):
            try:
                for what, got, stored, extra, slot in _RESULTS[group](self.spec, self.case,
                                                                       use_kernel):  # fmt: skip
                    allowed = rtol * (np.abs(np.asarray(stored, np.float64)) + extra)
                    rule = f"{rtol:.0e} x (|stored| + {extra:.3g}, {near})" if extra else (
                        f"{rtol:.0e} x |stored|")  # fmt: skip
                    _compare(what, got, stored, 0.0, 0.0, slot=slot, who=who, allowed=allowed,
                             rule=rule)  # fmt: skip
            except _Miss as miss:
                misses.append(
                    f"{group} {self.spec.name!r} misses the golden values of {self.file.name} "
                    f"({self.source}), case {self.id}, {who}: {miss}"
                )
        if misses:
            raise ConformanceError("\n- ".join(misses))


def golden_cases(spec, path, *, rtol: float | None = None, reference: bool = True) -> list:
    """The ``GoldenCase`` objects of the golden file ``path`` for ``spec``."""
    path = Path(path)
    data = load(path)
    if data["component"] != f"{group_of(spec)}.{spec.name}":
        raise ValueError(f"{path} holds values for {data['component']}, not "
                         f"{group_of(spec)}.{spec.name}")  # fmt: skip
    return [GoldenCase(spec, case, path, data["source"], rtol, reference)
            for case in data["cases"]]  # fmt: skip


def parametrize_golden(spec, path, *, rtol: float | None = None, reference: bool = True):
    """A ``pytest.mark.parametrize("case", ...)`` over the cases of a golden file; the test body
    calls ``case()``. ``reference=False`` holds only the kernel to them."""
    import pytest  # the kit's users have pytest; check_golden works without it

    cases = golden_cases(spec, path, rtol=rtol, reference=reference)
    return pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])


def check_golden(spec, path, *, rtol: float | None = None, reference: bool = True) -> int:
    """Hold ``spec`` (its kernel, and its NumPy reference unless ``reference=False``) to every
    case of ``path``; raise one ``ConformanceError`` listing the misses, else return how many
    cases passed."""
    misses = []
    cases = golden_cases(spec, path, rtol=rtol, reference=reference)
    for case in cases:
        try:
            case()
        except ConformanceError as exc:
            misses.append(str(exc))
    if misses:
        raise ConformanceError(f"{len(misses)} of {len(cases)} golden cases miss:\n- "
                               + "\n- ".join(misses))  # fmt: skip
    return len(cases)
