"""The fused epoch compiles once per dtype per installation: later processes, another learning
rate and another built-in loss/optimizer pair load it from numba's disk cache instead of
compiling it again."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCRIPT = """
import json, sys
import lossbench
from lossbench.training import compile_stats
base = ["trainer.progress=false", "tracking=none", "trainer.epochs=2", "data=iris"]
run = lossbench.train(overrides=[*base, *sys.argv[1:]])
print(json.dumps({"stats": compile_stats(), "status": run.status,
                  "compile_seconds": run.timings["compile_seconds"]}))
"""


def run_process(cache_dir, *overrides):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "LOSSBENCH_LOAD_PLUGINS": ""}
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_epoch_is_compiled_once_then_loaded_from_cache(tmp_path):
    first = run_process(tmp_path, "loss=cross_entropy", "optimizer=adam")
    assert first["stats"]["train_epoch"]["compiled"] == 1  # a cold cache compiles it once
    for overrides in (
        ["loss=cross_entropy", "optimizer=adam"],  # a second process
        ["loss=cross_entropy", "optimizer=adam", "optimizer.lr=0.5"],  # another lr
        ["loss=mse", "optimizer=sgd", "optimizer.momentum=0.9"],  # another loss/optimizer pair
        ["loss=huber", "optimizer=rmsprop", "model.activation=gelu", "model.hidden=[8,8]"],
        # dropout's p, the mode it switches and parameter groups are values, not types
        ["model.dropout=0.3", "optimizer=adamw", "model.decay_biases=false"],
        ["model.dropout=0.7", "model.hidden=[8,8]"],
        # batch norm on or off, its momentum and eps, its buffers: values, not types
        ["model.batch_norm=true", "model.hidden=[8,8]"],
        ["model.batch_norm=true", "model.bn_momentum=0.3", "model.bn_eps=1e-3",
         "model.dropout=0.2", "optimizer=adamw", "model.decay_biases=false"],
    ):
        later = run_process(tmp_path, *overrides)
        assert later["status"] == "finished"
        for fn in ("train_epoch", "evaluate"):
            assert later["stats"][fn]["compiled"] == 0, (overrides, later)
            assert later["stats"][fn]["cache_hits"] == 1, (overrides, later)
    assert later["compile_seconds"] < first["compile_seconds"]
