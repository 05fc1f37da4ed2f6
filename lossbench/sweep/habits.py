"""A Hydra user's ``--multirun`` habits, read as they mean it (``make_plan`` calls these):

- ``-cd/--config-dir DIR`` (more configs, e.g. a team's ``experiment/`` presets), ``-cp/
  --config-path DIR`` and ``-cn/--config-name NAME`` (another primary config): a sweep composes
  with them, as Hydra does, and so does every trial (``Plan.config_path``/``config_name`` and
  a ``hydra.searchpath`` override in the trial's overrides, which its rerun command keeps);
- ``hydra/sweeper=basic``: Hydra's basic sweeper: a grid, each job once; ``hydra/sweeper=optuna``
  is this sweeper; ``hydra/launcher=basic|joblib`` are local worker processes (with
  ``hydra.launcher.n_jobs``), ``hydra/launcher=ray`` Ray tasks, ``hydra/launcher=NAME`` a
  launcher a plugin registers as NAME; other launchers and sweepers are refused with what to
  run instead;
- hydra-optuna-sweeper's spellings: ``hydra.sweeper.params.KEY=EXPR`` is ``KEY=EXPR`` in the
  search space, ``hydra.sweeper.sampler.seed`` is ``sweep.seed``, its sampler class is
  ``sweep.sampler``, ``hydra.sweeper.X`` is ``sweep.X``;
- a search space of comma lists only (``optimizer.lr=0.1,0.01 loss=mse,cross_entropy``, no
  search function) is Hydra's basic sweep: every combination once, no pruning (``implied_grid``).
"""

from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep
from hydra.errors import HydraException

from lossbench.config.source import read_config_flags
from lossbench.errors import ConfigError

LAUNCHERS = {"basic": "local", "joblib": "local", "ray": "ray"}
SAMPLERS = {"TPESampler": "tpe", "RandomSampler": "random", "GridSampler": "grid",
            "CmaEsSampler": "cmaes", "GPSampler": "gp", "QMCSampler": "qmc",
            "NSGAIISampler": "tpe"}  # fmt: skip


def read_flags(argv: list[str]) -> tuple[list[str], dict]:
    """The arguments without ``-m``/``--multirun`` and the config flags
    (``lossbench.config.source.read_config_flags``), and the flags' values; any other flag is
    refused, with the ones a sweep takes."""
    args, flags = read_config_flags([a for a in argv if a not in ("-m", "--multirun")])
    for arg in args:
        if arg.startswith("-"):
            raise ConfigError(
                f"{arg} is not supported with --multirun. Supported: --config-dir/-cd, "
                "--config-path/-cp, --config-name/-cn and Hydra's overrides. Fix: drop it "
                "(for --cfg or --help, run the command without --multirun)."
            )
    return args, flags


def translate(args: list[str], notes: list[str], launchers=()) -> list[str]:
    """Hydra's and hydra-optuna-sweeper's spellings as lossbench's (see the module); what they
    became is noted. ``launchers``: the registered launchers' names."""
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        bare = key.lstrip("+")
        if bare in ("hydra/sweeper", "hydra.sweeper") and "=" in arg:
            out += _sweeper(value, notes)
        elif bare in ("hydra/launcher", "hydra.launcher") and "=" in arg:
            out += _launcher(value, notes, launchers)
        elif bare == "hydra.launcher.n_jobs":
            out.append(f"sweep.n_jobs={value}")
        elif bare.startswith("hydra.sweeper.params."):
            out.append(f"{bare[len('hydra.sweeper.params.'):]}={value}")
        elif bare.startswith("hydra.sweeper.sampler"):
            out += _sampler(bare, value)
        elif bare.startswith("hydra.sweeper."):
            out.append(f"sweep.{bare[len('hydra.sweeper.'):]}={value}")
        else:
            out.append(arg)
    return out


def _sweeper(value: str, notes: list[str]) -> list[str]:
    if value == "basic":
        notes.append("hydra/sweeper=basic: Hydra's basic sweeper, a grid of every combination, "
                     "each run once, not pruned")  # fmt: skip
        return ["sweep.sampler=grid", "sweep.pruner=none", "sweep.n_trials=1000000"]
    if value == "optuna":
        notes.append("hydra/sweeper=optuna: lossbench's sweeper is an Optuna sweeper (the same "
                     "override grammar, sweep.* for its settings)")  # fmt: skip
        return []
    raise ConfigError(
        f"hydra/sweeper={value} is not available: lossbench sweeps with its own Optuna sweeper "
        "(pruning, parallel workers, MLflow records). Choices: basic (a grid, each job once), "
        "optuna. Fix: drop hydra/sweeper, or pass hydra/sweeper=basic for a grid."
    )


def _launcher(value: str, notes: list[str], launchers) -> list[str]:
    mapped = LAUNCHERS.get(value) or (value if value in launchers else None)
    if mapped:
        notes.append(f"hydra/launcher={value}: sweep.launcher={mapped}")
        return [f"sweep.launcher={mapped}"]
    theirs = sorted(set(launchers) - {"local", *LAUNCHERS})
    raise ConfigError(
        f"hydra/launcher={value} is not available: lossbench's workers run as local processes "
        "or Ray tasks, each an ask/tell loop on the shared study. Choices: basic, joblib "
        "(local processes, hydra.launcher.n_jobs or sweep.n_jobs of them), ray"
        f"{''.join(f', {n}' for n in theirs)}{' (plugins)' if theirs else ''}. Fix: "
        "sweep.launcher=local sweep.n_jobs=N; for a SLURM or other cluster, start the same "
        "command on each node with a shared sweep.storage (e.g. PostgreSQL), or use "
        "sweep.launcher=ray on a Ray cluster (docs/sweeps.md, \"Sweeps on a cluster\")."
    )


def _sampler(key: str, value: str) -> list[str]:
    if key == "hydra.sweeper.sampler.seed":
        return [f"sweep.seed={value}"]
    if key in ("hydra.sweeper.sampler", "hydra.sweeper.sampler._target_"):
        name = value.rsplit(".", 1)[-1]
        if name in SAMPLERS:
            return [f"sweep.sampler={SAMPLERS[name]}"]
        if value in SAMPLERS.values():
            return [f"sweep.sampler={value}"]
    raise ConfigError(
        f"{key}={value}: lossbench sets the sampler with sweep.sampler (tpe, random, grid, "
        "cmaes, gp, qmc) and its seed with sweep.seed; other sampler arguments are Optuna's "
        "defaults. Fix: e.g. sweep.sampler=tpe sweep.seed=3."
    )


def is_comma_list(key: str, expression: str) -> bool:
    """Whether ``KEY=EXPRESSION`` is a plain comma list (``a,b``), not a search function."""
    try:
        (ov,) = OverridesParser.create().parse_overrides([f"{key}={expression}"])
    except HydraException:
        return False
    value = ov.value() if ov.is_sweep_override() else None
    return isinstance(value, ChoiceSweep) and bool(getattr(value, "simple_form", False))


def implied_grid(cli_space: dict, preset: dict, given: set[str], notes: list[str]) -> list[str]:
    """Overrides that make a search space of comma lists only Hydra's basic sweep (a grid,
    each job once, no pruning), unless the command chose a sampler, a pruner or a budget; and
    a note when comma lists sit beside search functions (the sampler then draws from both)."""
    lists = [k for k, e in cli_space.items() if is_comma_list(k, e)]
    if not lists:
        return []
    if len(lists) < len(cli_space) or preset:
        others = [k for k in {**preset, **cli_space} if k not in lists]
        notes.append(
            f"{', '.join(lists)}: comma lists beside search functions ({', '.join(others)}): "
            "the sampler draws from all of them, so a listed value may run several times or "
            "not at all (comma lists alone are a grid, each combination once)"
        )
        return []
    extra = []
    if "sweep.sampler" not in given:
        extra.append("sweep.sampler=grid")
    if "sweep.pruner" not in given:
        extra.append("sweep.pruner=none")
    if "sweep.n_trials" not in given:
        extra.append("sweep.n_trials=1000000")  # capped at the grid's size
    if extra:
        notes.append(f"{', '.join(lists)}: comma lists, as Hydra's basic sweeper runs them: "
                     "every combination once" + (", not pruned" if "sweep.pruner=none" in extra
                                                 else ""))  # fmt: skip
    return extra
