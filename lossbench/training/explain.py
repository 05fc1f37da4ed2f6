"""``python -m lossbench explain [OVERRIDES]``: one batch's loss computation, shown.

``explain`` sets a run up as training does (``setup.resolve`` and ``setup.set_up``: the same
split, scaling, targets and dtype), takes epoch 0's order as the fit loop does
(``Setup.next_epoch_order``) and its first minibatch, the one training's first step sees, and
evaluates the loss on the model's outputs at the initial weights three ways: by hand (the spec's
``unreduced`` terms in float64, summed and divided as its ``reduction`` says), with its NumPy
reference (float64) and with its numba kernel (in the run's dtype, as the fused epoch calls it),
with the gradients of the last two. A loss that declares no formula shows its kernel's docstring
(or its reference's); one without ``unreduced`` has its reference as the value by hand.
``render`` lays it out for a 100-column terminal. Nothing is written and no hook runs: no
tracking, no outputs.
"""

from __future__ import annotations

import copy
import inspect
import textwrap
from dataclasses import asdict, dataclass

import numpy as np
from omegaconf import open_dict

from lossbench.errors import PluginError
from lossbench.specs import REDUCTIONS
from lossbench.training.prepare import options_from
from lossbench.training.run import Run
from lossbench.training.setup import resolve, set_up

WIDTH = 100  # the terminal the layout is made for
MAX_COLUMNS = 10  # of a row's outputs shown; the rest are elided
LABEL = 11  # the width of the left-hand labels


@dataclass
class HandValue:
    """The loss by hand: the unreduced ``terms`` (float64), their sum, what the reduction
    divides it by (rows x columns, or rows) and the quotient."""

    terms: np.ndarray
    total: float
    divisor: int
    value: float


@dataclass
class Explanation:
    """One batch's loss: the run it was set up as, the batch's rows of the training set (in
    training's order), the model's outputs ``pred`` and the ``target`` (the run's dtype, as the
    kernel reads them), the packed options (hp), and (value, dLoss/dpred) from the reference
    (float64) and the kernel (run dtype); either is None when the spec has none."""

    run: Run
    rows: np.ndarray
    pred: np.ndarray
    target: np.ndarray
    hp: np.ndarray
    reference: tuple[float, np.ndarray] | None
    kernel: tuple[float, np.ndarray] | None
    hand: HandValue | None

    @property
    def spec(self):
        return self.run.specs["loss"]

    @property
    def value(self) -> float:
        """The value by hand, else the reference's, else the kernel's."""
        if self.hand is not None:
            return self.hand.value
        return (self.reference or self.kernel)[0]

    @property
    def scale(self) -> int:
        """What the kernel's gradient is already divided by: the reduction's divisor, or the
        batch size when the spec declares no reduction (the kernel contract's mean)."""
        rows, cols = self.pred.shape
        return rows * cols if self.spec.reduction == "elements" else rows


def explain(cfg, pm) -> Explanation:
    """Set up the run ``cfg`` describes (tracking off: no hook runs) and evaluate its loss on
    the first minibatch of epoch 0 at the initial weights, the model in training mode at step
    1 (dropout draws the masks the run's first step draws). Bad input raises a
    ``LossbenchError`` as ``train`` would, before anything is computed."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.tracking = {"name": "none"}
    specs, options = resolve(cfg, pm.registry)
    run = Run(config=cfg, output_dir=None, specs=specs, options=options)
    s = set_up(run)
    rows = s.next_epoch_order(bool(cfg.trainer.shuffle))[: s.batch].copy()
    prep, spec = run.dataset, specs["loss"]
    X = np.ascontiguousarray(prep.X_train[rows])
    Y = np.ascontiguousarray(prep.Y_train[rows])
    first_step = s.model_hp.copy()
    first_step[-3], first_step[-1] = 1.0, 1.0  # training, step 1: what the fused epoch computes
    pred = np.ascontiguousarray(run.predict(X, first_step), dtype=s.dtype)
    p64, y64 = pred.astype(np.float64), Y.astype(np.float64)
    reference = kernel = None
    if spec.reference is not None:
        value, grad = spec.reference(p64.copy(), y64.copy(), s.loss_hp.copy())
        reference = (float(value), np.asarray(grad, dtype=np.float64))
    if spec.kernel is not None:
        grad = np.empty_like(pred)
        kernel = (float(spec.kernel(pred, Y.copy(), s.loss_hp.copy(), grad)), grad)
    hand = by_hand(spec, p64, y64, s.loss_hp)
    return Explanation(run, rows, pred, Y, s.loss_hp, reference, kernel, hand)


def by_hand(spec, pred: np.ndarray, target: np.ndarray, hp: np.ndarray) -> HandValue | None:
    """The spec's unreduced terms of ``pred`` and ``target`` (float64), summed, divided as its
    reduction says; None when it gives no terms."""
    if spec.unreduced is None:
        return None
    terms = np.asarray(spec.unreduced(pred, target, hp.copy()), dtype=np.float64)
    rows, cols = pred.shape
    expected = pred.shape if spec.reduction == "elements" else (rows,)
    if terms.shape != expected:
        raise PluginError(
            f"loss {spec.name!r} from plugin {spec.plugin!r}: its unreduced terms have shape "
            f"{terms.shape}, but with reduction={spec.reduction!r} a batch of {rows} rows x "
            f"{cols} columns needs {expected}. Fix the plugin's unreduced function."
        )
    divisor = rows * cols if spec.reduction == "elements" else rows
    total = float(terms.sum())
    return HandValue(terms, total, divisor, total / divisor)


def formula_of(spec) -> tuple[str, str]:
    """(the formula, where it comes from): the spec's ``formula``, else the first two
    paragraphs of its kernel's docstring (its reference's for a NumPy-only loss)."""
    if spec.formula:
        return spec.formula.strip(), ""
    function = spec.kernel if spec.kernel is not None else spec.reference
    name = getattr(function, "__name__", "the kernel")
    paragraphs = [p.strip() for p in (inspect.getdoc(function) or "").split("\n\n") if p.strip()]
    if not paragraphs:
        return "not given: the spec has no formula and its kernel no docstring", ""
    return "\n\n".join(paragraphs[:2]), f"from {name}'s docstring (the spec gives no formula):"


# ---------------------------------------------------------------------------------------------
# the layout


def render(e: Explanation, n_rows: int = 4) -> str:
    """The explanation as text for a 100-column terminal, showing ``n_rows`` of the batch."""
    sections = [_header(e), _loss_section(e), _rows_section(e, n_rows), _value_section(e),
                _textbook_section(e)]  # fmt: skip
    return "\n\n".join("\n".join(lines) for lines in sections if lines)


def _labelled(label: str, text: str) -> list[str]:
    """``text`` wrapped to the width, its first line after ``label``, the rest indented."""
    lines = []
    for i, part in enumerate(text.split("\n")):
        lines += textwrap.wrap(part, WIDTH, initial_indent=(label if i == 0 else "").ljust(LABEL),
                               subsequent_indent=" " * LABEL, break_on_hyphens=False)  # fmt: skip
    return lines


def _header(e: Explanation) -> list[str]:
    cfg, prep = e.run.config, e.run.dataset
    task = (f"classification, {prep.n_classes} classes" if prep.task == "classification"
            else "regression")  # fmt: skip
    n_in = prep.X_train.shape[1]
    order = ("in the order training shuffles them" if cfg.trainer.shuffle
             else "in the data's order (trainer.shuffle=false)")  # fmt: skip
    scaled = ("features standardised on the training part"
              if options_from(e.run.options["data"]).standardize
              else "features as the data gives them")  # fmt: skip
    return [
        *_labelled("explain", f"loss={e.spec.name} on data={cfg.data.name} ({task}), "
                   f"model={cfg.model.name} ({n_in} inputs -> {prep.n_outputs} outputs), "
                   f"{e.pred.dtype.name}, seed {cfg.seed}"),
        *_labelled("batch", f"the first minibatch of epoch 0 at the initial weights, as "
                   f"training's first step sees it: {len(e.rows)} of the {len(prep.X_train)} "
                   f"training rows, {order}, {scaled}"),
    ]  # fmt: skip


def _loss_section(e: Explanation) -> list[str]:
    spec, prep = e.spec, e.run.dataset
    options = asdict(e.run.options["loss"])
    reduction = REDUCTIONS.get(spec.reduction)
    if reduction is None:
        reduction = ("not declared (the spec says nothing; every lossbench loss kernel returns "
                     "a batch mean, over what is the plugin's own)")  # fmt: skip
    if spec.target == "class_index":
        target = f"y is the class index of the row (one column); p holds {prep.n_outputs} logits"
    elif spec.target == "binary":
        target = "y is the row's class, 0 or 1 (one column); p is one logit"
    elif prep.task == "classification":
        target = (f"y is a one-hot row, one column per class ({prep.n_classes}): on class "
                  "data every loss on values (mse, mae, huber) trains against one-hot "
                  "targets")  # fmt: skip
    else:
        target = f"y holds the target values ({_plural(e.target.shape[1], 'column')}), not scaled"
    return [
        *_labelled("loss", f"{spec.name}: {spec.description}" if spec.description else spec.name),
        *_labelled("options", ", ".join(f"{k}={v}" for k, v in options.items()) or "(none)"),
        *_formula_lines(spec),
        *_labelled("reduction", reduction),
        *_labelled("targets", target),
    ]


def _formula_lines(spec) -> list[str]:
    """The spec's formula wrapped beside its label; a docstring's lines kept as written (its
    layout is the maths), indented under a line saying where it comes from."""
    text, source = formula_of(spec)
    if not source:
        return _labelled("formula", text)
    indent = " " * 4
    lines = [f"{'formula':<{LABEL}}{source}"]
    for line in text.split("\n"):
        lines += textwrap.wrap(line, WIDTH, initial_indent=indent, subsequent_indent=indent * 2,
                               drop_whitespace=False) or [""]  # fmt: skip
    return lines


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _num(v: float) -> str:
    """A number of the rows table: integers as integers (targets), else 4 decimals."""
    v = float(v)
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    return f"{v:+.4f}" if abs(v) < 1e5 else f"{v:+.3e}"


def _cells(values: np.ndarray, width: int) -> str:
    shown = [_num(v).rjust(width) for v in values[:MAX_COLUMNS]]
    more = len(values) - MAX_COLUMNS
    return "".join(shown) + (f"  ... +{more} more" if more > 0 else "")


def _rows_section(e: Explanation, n_rows: int) -> list[str]:
    n = min(n_rows, len(e.rows))
    hand, scale = e.hand, e.scale
    blocks = []  # (label, values) per row
    for i in range(n):
        block = [("p", e.pred[i]), ("y", e.target[i])]
        if hand is not None and hand.terms.ndim == 2:
            block.append(("l", hand.terms[i]))
        for name, result in (("g kernel", e.kernel), ("g ref.", e.reference)):
            if result is not None:
                block.append((name, result[1][i] * scale))
        blocks.append(block)
    width = 1 + max(len(_num(v)) for b in blocks for _, a in b for v in a[:MAX_COLUMNS])
    legend = "p: the model's output, y: the target as the loss reads it"
    if hand is not None:
        legend += ", l: the loss terms" if hand.terms.ndim == 2 else ", l_i: the row's loss"
    legend += (f"; g = {scale} x dLoss/dp, from the kernel and the reference: the gradient "
               f"a kernel hands back is already divided by {scale} "
               f"({_divisor_words(e)})")  # fmt: skip
    which = f"rows 1-{n}" if n > 1 else "row 1"
    lines = textwrap.wrap(f"{which} of the {len(e.rows)} in the batch. {legend}", WIDTH)
    for i, block in enumerate(blocks):
        lines.append(f"  training row {e.rows[i]}" + _row_note(e, i))
        lines += [f"    {name:<{LABEL - 2}}{_cells(values, width)}" for name, values in block]
    return lines


def _row_note(e: Explanation, i: int) -> str:
    """What follows a row's name: its class and its loss term(s) summed."""
    prep, note = e.run.dataset, ""
    if prep.task == "classification":
        label = int(prep.labels_train[e.rows[i]])
        name = prep.class_names[label] if prep.class_names else str(label)
        note += f" (class {label}" + (f": {name})" if name != str(label) else ")")
    if e.hand is not None:
        terms = e.hand.terms[i]
        note += f"   sum_j l_ij = {terms.sum():.6g}" if terms.ndim else f"   l_i = {terms:.6g}"
    return note


def _divisor_words(e: Explanation) -> str:
    rows, cols = e.pred.shape
    if e.spec.reduction == "elements":
        return f"{_plural(rows, 'row')} x {_plural(cols, 'column')}"
    if e.spec.reduction == "rows":
        return _plural(rows, "row")
    return f"the batch size, {_plural(rows, 'row')}, as the kernel contract says"


def _value_section(e: Explanation) -> list[str]:
    rows = len(e.rows)
    lines = [f"the loss on the {rows} rows of the batch (by hand and reference: float64)"]

    def row(label: str, value: float, text: str) -> None:
        lines.extend(textwrap.wrap(f"  {label:<{LABEL}}{value:<18.12g}{text}", WIDTH,
                                   subsequent_indent=" " * (LABEL + 20)))  # fmt: skip

    if e.hand is not None:
        what = "l_ij" if e.hand.terms.ndim == 2 else "l_i"
        row("by hand", e.hand.value, f"sum of the {e.hand.terms.size} terms {what} "
            f"{e.hand.total:.10g} / {e.hand.divisor} ({_divisor_words(e)})")  # fmt: skip
    if e.reference is not None:
        name = getattr(e.spec.reference, "__name__", "reference")
        row("reference", e.reference[0], f"{name} (NumPy" + (
            ")" if e.hand is not None else "; the spec gives no unreduced terms, so this is the "
            "value by hand)"))  # fmt: skip
    if e.kernel is not None:
        name = getattr(e.spec.kernel, "__name__", "kernel")
        row("kernel", e.kernel[0], f"{name} (numba, {e.pred.dtype.name}, as training computes it)")
    else:
        lines += _labelled("  kernel", "none: a NumPy-only loss, trained on the slow path with "
                           "its reference")  # fmt: skip
    return lines + _differences(e)


def _differences(e: Explanation) -> list[str]:
    """The values' and gradients' differences, with why float32 differs."""
    out, base = [], e.value
    base_name = "by hand" if e.hand is not None else "reference"
    if e.hand is not None and e.reference is not None:
        out.append(f"reference - by hand {e.reference[0] - base:.2g}")
    if e.kernel is not None and (e.hand is not None or e.reference is not None):
        out.append(f"kernel - {base_name} {e.kernel[0] - base:.2g}")
    lines = [f"  {'difference':<{LABEL}}{', '.join(out)}"] if out else []
    if e.kernel is not None and e.reference is not None:
        gap = float(np.max(np.abs(e.kernel[1].astype(np.float64) - e.reference[1])))
        top = float(np.max(np.abs(e.reference[1])))
        lines.append(f"  {'gradient':<{LABEL}}dLoss/dp: max |kernel - reference| {gap:.2g} "
                     f"over the batch (its entries reach {top:.2g})")  # fmt: skip
    if lines and e.kernel is not None and e.pred.dtype == np.float32:
        lines += textwrap.wrap(
            "The kernel takes the run's float32 numbers (and may round its steps to float32), "
            "by hand and the reference work in float64 on the same numbers: with "
            "trainer.dtype=float64 they agree to about 1e-16.",
            WIDTH, initial_indent=" " * (LABEL + 2), subsequent_indent=" " * (LABEL + 2))
    return lines


def _textbook_section(e: Explanation) -> list[str]:
    """How the reduction compares with the textbook (1/n) sum over rows, with this batch's
    numbers."""
    rows, cols = e.pred.shape
    reduction = e.spec.reduction
    if reduction == "rows":
        text = (f"(1/n) sum_i l_i over the n = {rows} rows: PyTorch's mean over rows is the "
                "textbook formula, one term per row")  # fmt: skip
    elif reduction == "elements" and cols == 1:
        text = (f"(1/n) sum_i l_i over the n = {rows} rows: with one column, PyTorch's mean "
                "over rows x columns is the textbook formula")  # fmt: skip
    elif reduction == "elements":
        total = e.value * rows * cols if e.hand is None else e.hand.total
        kind = ("one-hot columns, one per class" if e.run.dataset.task == "classification"
                else "target columns")  # fmt: skip
        text = (f"(1/n) sum_i sum_j l_ij, n = {rows} rows: {total:.6g} / {rows} = "
                f"{total / rows:.6g}. PyTorch's mean (lossbench's) divides by rows x columns = "
                f"{rows} x {cols} = {rows * cols} instead: {cols} times smaller ({cols} {kind}), "
                f"and so are its gradients, which for SGD is a {cols} times smaller learning "
                "rate")  # fmt: skip
    else:
        text = ("reduction: not declared, so how this value relates to (1/n) sum over rows is "
                "the plugin's to say (LossSpec.reduction)")  # fmt: skip
    return _labelled("textbook", text)
