"""The subcommands that look at a run without making one: ``lr_find`` (the learning-rate range
test, ``lossbench.training.lr_find``) and ``explain`` (one batch's loss computation, shown,
``lossbench.training.explain``). Both take a run's config overrides after their own flags."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from lossbench.cli.parser import CommandParser
from lossbench.config import compose, run_token
from lossbench.errors import LossbenchError, PluginFailure
from lossbench.plugins import build_plugin_manager, set_plugin_manager
from lossbench.training.explain import explain, render


def lr_find_parser() -> CommandParser:
    parser = CommandParser(
        "lr_find", "The learning-rate range test: an exponential lr ramp, the smoothed loss "
        "against lr (lr_find.png), a suggested lr and the command to train with it. See "
        "docs/sweeps.md, 'Finding a learning rate'.", overrides=True,
    )  # fmt: skip
    parser.flag("--start-lr", float, "the ramp's first lr (default 1e-6)", metavar="1e-6")
    parser.flag("--end-lr", float, "the ramp's last lr (default 1)", metavar="1")
    parser.flag("--steps", int, "steps of the ramp (default 200)", metavar="200")
    parser.flag("--divergence", float, "stop when the smoothed loss exceeds this many times its "
                "minimum (default 4)", metavar="4")  # fmt: skip
    parser.flag("--beta", float, "the loss's smoothing (default 0.9)", metavar="0.9")
    parser.flag("--output-dir", str, "the folder of lr_find.png, .csv and .json (default "
                "outputs/lr_find/DATE-TOKEN)", metavar="DIR")  # fmt: skip
    return parser


def lr_find_command(args) -> None:
    """``python -m lossbench lr_find [OPTIONS] [OVERRIDES]``: the learning-rate range test
    (``lossbench.training.lr_find``); prints the suggestion, its rule and the command to train
    with it; every tracker the config selects records it (``tracking.plugin.record_lr_find``).
    Exit 2 for bad input, 1 when a record is incomplete (MLflow's: spooled for a replay)."""
    from datetime import datetime  # start-up: the lr_find modules load for lr_find only

    from lossbench.tracking.plugin import record_lr_find
    from lossbench.training.lr_find import LRFindOptions, find_lr

    overrides = args.overrides
    flags = {k: v for k in ("start_lr", "end_lr", "steps", "divergence", "beta")
             if (v := getattr(args, k)) is not None}  # fmt: skip
    stamp = f"{datetime.now():%Y-%m-%d_%H-%M-%S}-{run_token()}"  # new for every run
    out = args.output_dir or str(Path("outputs") / "lr_find" / stamp)
    _check_lr_find_target(out, overrides)
    pm = build_plugin_manager(args.plugins_dir)
    set_plugin_manager(pm)
    cfg = compose(overrides, registry=pm.registry)
    try:
        run, result, files = find_lr(cfg, LRFindOptions(**flags), out, pm)
        record_lr_find(run, result, files, pm.registry)
    except PluginFailure as exc:  # a plugin's bug: 1 (bad input, 2, is the caller's)
        print(f"lossbench: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    _print_lr_find(run, result, overrides, files)
    for message in run.record_errors:
        print(f"lossbench: error: {message}", file=sys.stderr)
    if run.record_errors:
        sys.exit(1)


def _check_lr_find_target(out: str, overrides: list[str]) -> None:
    """lr_find's folder is ``--output-dir`` (a folder, or a new path), never a Hydra setting."""
    hydra_args = [o for o in overrides if o.lstrip("+~").startswith("hydra.")]
    if hydra_args:
        raise LossbenchError(
            f"lr_find does not take {hydra_args[0]}: it is not a Hydra run, so Hydra's settings "
            "would be ignored. Fix: drop it; choose lr_find's folder with --output-dir DIR. "
            f"{lr_find_parser().usage_line()}"
        )  # fmt: skip
    if Path(out).exists() and not Path(out).is_dir():
        raise LossbenchError(
            f"lr_find --output-dir {out!r} is a file, not a folder: lr_find writes lr_find.png, "
            ".csv and .json into a folder. Fix: pass a folder, or a path that does not exist "
            "yet."
        )  # fmt: skip


def _print_lr_find(run, result, overrides: list[str], files: list) -> None:
    console = Console(soft_wrap=True)  # the command line must stay copy-pasteable
    end = "diverged, stopped early" if result.diverged else "ran every step"
    console.print(f"lr range test: {len(result.lrs)} steps from lr {result.lrs[0]:.3g} to "
                  f"{result.lrs[-1]:.3g} ({end}); plot: {files[-1]}")  # fmt: skip
    if result.suggestion is None:
        console.print("[red]no suggestion: the loss did not fall over the range[/red]; try "
                      "another --start-lr/--end-lr or more --steps")  # fmt: skip
        return
    console.print(f"suggested lr [bold]{result.suggestion:.3g}[/bold]: the {result.rule} "
                  f"(a tenth of the lr of the minimum, the other usual rule: "
                  f"{result.min_over_10:.3g})")  # fmt: skip
    keep = [o for o in overrides if not o.lstrip("+").startswith("optimizer.lr=")]
    console.print("train with it:\n  python -m lossbench "
                  + " ".join([*keep, f"optimizer.lr={result.suggestion:.3g}"]))


def explain_parser() -> CommandParser:
    parser = CommandParser(
        "explain", "One batch's loss computation, shown: the first minibatch of epoch 0 at the "
        "initial weights, as a run with the same overrides trains on it. See docs/losses.md.",
        overrides=True,
    )  # fmt: skip
    parser.flag("--rows", int, "how many of the batch's rows to print (default 4)", default=4,
                metavar="N")  # fmt: skip
    return parser


def explain_command(args) -> None:
    """``python -m lossbench explain [--rows N] [OVERRIDES]``: the first minibatch a run with
    those overrides trains on, at the initial weights: the loss's formula and reduction, rows of
    predictions and targets, the value by hand and by the kernel, the gradient
    (``lossbench.training.explain``). Writes nothing, tracks nothing; exit 2 for bad input."""
    if args.rows < 1:
        raise LossbenchError(
            f"explain --rows {args.rows} is not allowed: it must be a positive integer, how many "
            f"of the batch's rows to print (default 4). Fix: pass e.g. --rows 4. "
            f"{explain_parser().usage_line()}"
        )
    pm = build_plugin_manager(args.plugins_dir)
    set_plugin_manager(pm)
    print(render(explain(compose(args.overrides, registry=pm.registry), pm), args.rows))
