"""What a run leaves in MLflow besides curves: its model (``python_function`` flavour), its
dataset inputs and its registered model versions. Written by the side process
(``lossbench.tracking.worker``) and by ``python -m lossbench replay`` (``spool.replay``) from
the same JSON descriptions, so a run whose store failed gets them on replay, once.

The trainer (``plugin.py``) describes them without importing MLflow:

``model``    ``{"data": folder, "columns": [...], "features": [...], "dtype", "example": [[...]],
             "requirements": [...], "register": NAME or null, "tags": {...}}``: ``data`` is a
             ``lossbench.training.predict.Predictor`` folder; the model loads through
             ``lossbench.tracking.pyfunc`` (a loader module: no pickled Python objects).
``datasets`` ``[{"name", "digest", "context", "source": {"type": "local"|"code", ...},
             "features": [rows, cols], "targets": [rows, cols]}, ...]``

Imports MLflow inside its functions only (the training process imports this module's names
through the spool, never MLflow).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from lossbench._version import __version__
from lossbench.errors import ConfigError
from lossbench.training.predict import Predictor

MODEL_NAME = "model"  # the model's name in its run: runs:/RUN_ID/model
DATASET_CONTEXT_TAG = "mlflow.data.context"
EXAMPLE_ROWS = 5
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


# ---------------------------------------------------------------------------------------------
# the trainer's side: descriptions, no MLflow


def check_model_name(key: str, name) -> str | None:
    """A registered model name from the config (``tracking.register_model``,
    ``sweep.register_best``), or a ConfigError saying what is allowed."""
    if name is None:
        return None
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        raise ConfigError(
            f"{key}={name!r} is not a registered model name lossbench accepts: 1 to 100 "
            "letters, digits, '.', '_' or '-', starting with a letter or digit. Fix: pass e.g. "
            f"{key}=digits-mlp."
        )
    return name


def requirements(sources: dict[str, dict[str, str]]) -> list[str]:
    """pip requirements of the model: lossbench and the distributions of the run's plugins
    (a single-file plugin has none: it must be on the loading side's ``--plugins-dir``)."""
    reqs = {"lossbench": f"lossbench=={__version__}"}
    for source in sources.values():
        parts = source.get("distribution", "").split(" ")
        if len(parts) == 2 and parts[1] and not parts[0].endswith(".py"):
            reqs.setdefault(parts[0], f"{parts[0]}=={parts[1]}")
    return list(reqs.values())


def describe_model(run, folder: Path, register: str | None, tags: dict) -> dict:
    """The ``model`` request of a run that trained: its ``Predictor`` written into
    ``folder``, a few validation rows as the input example (in raw feature units)."""
    predictor = Predictor.from_run(run)
    predictor.save(folder)
    prep = run.dataset
    rows = prep.X_val[:EXAMPLE_ROWS].astype("float64") * predictor.scale + predictor.mean
    return {
        "data": str(folder),
        "features": predictor.feature_names,
        "columns": predictor.columns,
        "example": rows.tolist(),
        "requirements": requirements(run.sources),
        "register": register,
        "tags": tags,
    }


def describe_datasets(run) -> list[dict]:
    """The run's dataset inputs: its training and validation rows, by digest."""
    prep, data = run.dataset, run.config.data
    if prep is None or not prep.digests:
        return []
    path = data.get("path")
    source = ({"type": "local", "uri": str(Path(path).resolve())} if path
              else {"type": "code", "data": f"data={data.name}"})  # fmt: skip
    n_targets = prep.Y_train.shape[1] if prep.task == "regression" else 1
    shapes = {"training": len(prep.X_train), "validation": len(prep.X_val)}
    return [
        {"name": str(data.name), "digest": prep.digests[context], "context": context,
         "source": source, "features": [n, prep.X_train.shape[1]], "targets": [n, n_targets]}
        for context, n in shapes.items()
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the store's side (the MLflow side process, the replay)


def signature(spec: dict):
    """The model's signature: a (rows, features) float64 tensor in (so an array and a DataFrame
    in the training column order both work: MLflow refuses an array against named columns; the
    names are in the model's metadata), the prediction columns out."""
    # start-up: MLflow is already loaded in the processes that call this
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    inputs = Schema([TensorSpec(np.dtype("float64"), (-1, len(spec["features"])))])
    outputs = Schema(
        [ColSpec("string" if c == "label" else "double", c) for c in spec["columns"]]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def logged_model(client, run_id: str):
    """The run's ``model`` already logged (a replay after a store failed mid-upload), or None."""
    try:
        found = client.search_logged_models(
            experiment_ids=[client.get_run(run_id).info.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'",
        )
    except Exception:  # a store without logged models: look for the artifact folder
        return None
    ready = [m for m in found if str(getattr(m, "status", "")).endswith("READY")]
    return ready[0] if ready else None


def log_model(client, run_id: str, spec: dict) -> str:
    """Log the run's pyfunc model (once: a model already there is kept); returns its URI."""
    # start-up: MLflow is already loaded in the processes that call this
    import mlflow
    from mlflow.models import Model

    if logged_model(client, run_id) is None:
        mlflow.set_tracking_uri(client.tracking_uri)  # Model.log uses the global client
        example = np.asarray(spec["example"], dtype=np.float64)
        experiment = client.get_run(run_id).info.experiment_id  # else it goes to Default
        pending = client.create_logged_model(experiment, name=MODEL_NAME, source_run_id=run_id)
        Model.log(
            artifact_path=None,
            name=MODEL_NAME,
            model_id=pending.model_id,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            loader_module="lossbench.tracking.pyfunc",
            data_path=spec["data"],
            signature=signature(spec),
            input_example=example,
            pip_requirements=spec["requirements"],
            metadata={"lossbench.features": spec["features"], "lossbench.columns": spec["columns"]},
        )
    return f"runs:/{run_id}/{MODEL_NAME}"


def register(client, name: str, run_id: str, tags: dict[str, str], alias: str | None = None):
    """A new version of the registered model ``name`` from the run's model, tagged; ``alias``
    (e.g. ``best``) is moved to it. Returns the version."""
    from mlflow.exceptions import MlflowException  # loaded with the client

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(
            getattr(exc, "error_code", "")
        ):
            raise
    model = logged_model(client, run_id)
    source = f"models:/{model.model_id}" if model is not None else f"runs:/{run_id}/{MODEL_NAME}"
    version = client.create_model_version(
        name, source, run_id=run_id, tags={k: str(v) for k, v in tags.items()},
        model_id=model.model_id if model is not None else None,
    )  # fmt: skip
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return version


def registered_by(client, name: str, run_id: str):
    """The version of ``name`` made from this run's model, or None."""
    for version in client.search_model_versions(f"name = '{name}' AND run_id = '{run_id}'"):
        return version
    return None


def log_run_model(client, run_id: str, spec: dict) -> dict:
    """Log the run's model, and register it when its spec names a registered model (once:
    a version made from this run already is kept); returns ``model_uri`` (and
    ``model_version``)."""
    done = {"model_uri": log_model(client, run_id, spec)}
    name = spec.get("register")
    if name:
        version = registered_by(client, name, run_id) or register(
            client, name, run_id, spec.get("tags", {})
        )
        done["model_version"] = int(version.version)
    return done


def dataset_inputs(specs: list[dict]) -> list:
    """``DatasetInput`` entities from their descriptions (see the module)."""
    # start-up: MLflow is already loaded in the processes that call this
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import Schema, TensorSpec

    out = []
    for d in specs:
        src = d["source"]
        if src["type"] == "local":
            from mlflow.data.dataset_source_registry import resolve_dataset_source  # as above

            source = resolve_dataset_source(src["uri"])
        else:
            source = CodeDatasetSource(tags={"lossbench.data": src["data"]})
        tensor = lambda cols: Schema([TensorSpec(np.dtype("float64"), (-1, cols))])  # noqa: E731
        schema = TensorDatasetSchema(features=tensor(d["features"][1]),
                                     targets=tensor(d["targets"][1]))  # fmt: skip
        profile = {"features_shape": d["features"], "targets_shape": d["targets"],
                   "num_rows": d["features"][0]}  # fmt: skip
        entity = Dataset(
            name=d["name"], digest=d["digest"][:36], source_type=source._get_source_type(),
            source=source.to_json(), schema=json.dumps(schema.to_dict()),
            profile=json.dumps(profile),
        )  # fmt: skip
        out.append(DatasetInput(entity, tags=[InputTag(DATASET_CONTEXT_TAG, d["context"])]))
    return out


def log_datasets(client, run_id: str, specs: list[dict]) -> None:
    """Record the run's dataset inputs (MLflow keeps one row per dataset and run).

    MLflow finds or creates each dataset of an experiment by (name, digest) without a lock:
    two runs on the same rows starting at once both insert it, and the second fails on the
    unique constraint (its whole request rolled back). Trying again finds the dataset."""
    if not specs:
        return
    from mlflow.exceptions import MlflowException  # loaded with the client

    for attempt in range(5):
        try:
            client.log_inputs(run_id, datasets=dataset_inputs(specs))
            return
        except MlflowException as exc:
            text = str(exc).lower()
            if attempt == 4 or ("unique constraint" not in text and "integrityerror" not in text):
                raise
            time.sleep(0.05 * (attempt + 1))

