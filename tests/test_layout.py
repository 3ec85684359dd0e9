"""The sweep's one storage layout and the plan that carries it: every path derived from the storage URI in one place,
the same in every process the plan is pickled to, local or on the S3 API. None of this needs Ray."""

from __future__ import annotations

import os
import pickle

import pyarrow.fs as pafs

from orchestrator.layout import SWEEP_FILE, SweepLayout
from orchestrator.plan import make_plan
from orchestrator.sweep import parse_args

SMOKE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "search_spaces", "smoke.yaml")


def test_every_path_of_a_local_sweep_comes_from_the_storage_root(tmp_path):
    layout = SweepLayout(str(tmp_path), "s1", retry_budget_s=5)
    assert layout.uri == f"{tmp_path}/s1"
    assert layout.sweep_file.path == os.path.join(str(tmp_path), "s1", SWEEP_FILE)
    assert layout.pretrained("k0", 3).path == os.path.join(str(tmp_path), "s1", "pretrained", "k0", "seed-3")
    assert layout.search_experiment() == (str(tmp_path), None, "s1")
    assert layout.sweep_experiment("verify-r1") == (os.path.join(str(tmp_path), "s1"), None, "verify-r1")
    runs, fs = layout.train_runs()
    assert (runs, fs) == (os.path.join(str(tmp_path), "s1", "train"), None) and os.path.isdir(runs)
    assert layout.experiment_path(*layout.search_experiment()) == os.path.join(str(tmp_path), "s1")
    assert layout.checkpoint_uri("/abs/ckpt") == "/abs/ckpt"


def test_on_the_s3_api_ray_gets_bucket_paths_and_records_get_full_uris(s3_env):
    layout = SweepLayout(f"s3://{s3_env}/sweeps", "s1", retry_budget_s=5)
    path, fs, name = layout.search_experiment()
    assert (path, name) == (f"{s3_env}/sweeps", "s1") and isinstance(fs, pafs.S3FileSystem)
    runs, _ = layout.train_runs()
    assert runs == f"{s3_env}/sweeps/s1/train"
    assert layout.experiment_path(path, fs, name) == f"{s3_env}/sweeps/s1"
    assert layout.checkpoint_uri(f"{s3_env}/sweeps/s1/train/x") == f"s3://{s3_env}/sweeps/s1/train/x"
    assert layout.pretrained("k", 0).uri == f"s3://{s3_env}/sweeps/s1/pretrained/k/seed-0"


def test_the_plan_resolves_the_storage_once_and_its_layout_survives_pickling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = parse_args(
        [
            "--space",
            SMOKE,
            "--name",
            "s-layout",
            "--storage",
            "rel/sweeps",
            "--data-root",
            "rel/data",
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
        ]
    )
    plan = make_plan(args)
    assert plan.storage == os.path.join(str(tmp_path), "rel", "sweeps")  # absolute before any worker sees it
    assert plan.layout == SweepLayout(plan.storage, "s-layout", plan.retry_budget_s)
    assert plan.sweep_uri == plan.layout.uri == f"{plan.storage}/s-layout"
    worker_side = pickle.loads(pickle.dumps(plan))  # what tune.with_parameters and loop_config carry
    assert worker_side.layout == plan.layout
    assert worker_side.layout.pretrained("k", 1).path == plan.layout.pretrained("k", 1).path
    assert f"--storage {plan.storage} " in plan.resume_command()  # the resume finds the same place
