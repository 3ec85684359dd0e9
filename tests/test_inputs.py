"""A user's mistake ends in one line naming the input and what is allowed, exit 2, before any Ray work: one case
per mistake, through the real command-line entry points (in-process, so each costs well under a second or two)."""

from __future__ import annotations

import os

import pytest
import yaml

from tests.helpers import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "search_spaces", "smoke.yaml")


def _space(tmp_path, edit) -> str:
    raw = yaml.safe_load(open(SMOKE))
    edit(raw)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _write(tmp_path, name: str, data: bytes | str) -> str:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


def _metric_foo(raw):
    raw["objective"]["metric"] = "foo"


def _infinite_high(raw):
    raw["parameters"]["beta"]["high"] = float("inf")


def _select_is_source(raw):
    raw["targets"]["select"] = [raw["source"]]


def _grace_beyond(raw):
    raw["scheduler"]["grace_period"] = 9  # smoke: 4 evaluations


def _seed_too_large(raw):
    raw["search"]["seed"] = 2**32


def _step_too_wide(raw):
    raw["parameters"]["lr_heads"] = {"type": "float", "low": 0.01, "high": 0.3, "step": 0.5}


def _huge_image(raw):
    raw["fixed"]["image_height"] = 100000


class _NotRay:
    """A TCP server that answers, but not as Ray does (as Redis on Ray's default port 6379 would)."""

    def __init__(self):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.recv(1024)
            conn.sendall(b"-ERR unknown command\r\n")
            conn.close()


_NOT_RAY: list = []


def _not_ray_address(_t) -> list[str]:
    if not _NOT_RAY:
        _NOT_RAY.append(_NotRay())
    return ["--space", SMOKE, "--ray-address", f"127.0.0.1:{_NOT_RAY[0].port}"]


SWEEP_CASES = {
    "objective metric no trial reports": (
        lambda t: ["--space", _space(t, _metric_foo)],
        "objective.metric: 'foo' is not a metric a trial reports",
    ),
    "a bound that is infinite": (
        lambda t: ["--space", _space(t, _infinite_high)],
        "parameters.beta.high: must be a finite number",
    ),
    "a tracking URI of no known scheme": (
        lambda t: ["--space", SMOKE, "--tracking-uri", "foo://x"],
        "scheme foo:// is not one MLflow stores runs in",
    ),
    "--resume of an unknown sweep": (
        lambda t: ["--space", SMOKE, "--resume", "smoke-nope"],
        "--resume smoke-nope: no sweep of that name",
    ),
    "the space is a folder": (lambda t: ["--space", str(t)], "is a folder; give a search-space YAML file"),
    "the space is binary": (
        lambda t: ["--space", _write(t, "x.yaml", b"\xff\xfe\x00\x81binary")],
        "is not a text (YAML) file",
    ),
    "a parameter given twice": (
        lambda t: [
            "--space",
            _write(
                t,
                "d.yaml",
                open(SMOKE).read().replace("parameters:\n", "parameters:\n  beta: {type: float, low: 1, high: 2}\n"),
            ),
        ],
        "key 'beta' is given twice",
    ),
    "a select target that is the source": (lambda t: ["--space", _space(t, _select_is_source)], "is the source"),
    "--storage not writable": (lambda t: ["--space", SMOKE, "--storage", "/proc/adin"], "--storage /proc/adin"),
    "--storage a file": (lambda t: ["--space", SMOKE, "--storage", _write(t, "f", "x")], "is a file; give a folder"),
    "--data-root not writable": (lambda t: ["--space", SMOKE, "--data-root", "/proc/adin"], "--data-root /proc/adin"),
    "--tracking-uri SQLite file not writable": (
        lambda t: ["--space", SMOKE, "--tracking-uri", "sqlite:////proc/x/m.db"],
        "--tracking-uri sqlite:////proc/x/m.db",
    ),
    "--epochs negative": (lambda t: ["--space", SMOKE, "--epochs", "-1"], "--epochs: must be > 0, got -1"),
    "--workers zero": (lambda t: ["--space", SMOKE, "--workers", "0"], "--workers: must be >= 1, got 0"),
    "--retry-budget negative": (lambda t: ["--space", SMOKE, "--retry-budget", "-1"], "--retry-budget must be >= 0"),
    "--name with a slash": (
        lambda t: ["--space", SMOKE, "--name", "a/b"],
        "--name 'a/b': a sweep name uses ASCII letters",
    ),
    "--ray-address given as a dashboard's http address (what env.sh's RAY_ADDRESS is, for ray job submit)": (
        lambda t: ["--space", SMOKE, "--ray-address", "http://127.0.0.1:8265"],
        "an http address is a Ray dashboard's, which `ray job submit` takes",
    ),
    "--ray-address that nothing answers": (
        lambda t: ["--space", SMOKE, "--ray-address", f"127.0.0.1:{free_port()}"],
        "nothing answers at 127.0.0.1",
    ),
    "--select not a dataset": (lambda t: ["--space", SMOKE, "--select", str(t / "nothing")], "no manifest.json"),
    "--study-storage neither URL nor journal": (
        lambda t: ["--space", SMOKE, "--study-storage", "study.txt"],
        "study.txt': give an SQLAlchemy URL",
    ),
    "--study-storage that does not open": (
        lambda t: ["--space", SMOKE, "--study-storage", f"postgresql://127.0.0.1:{free_port()}/adin"],
        "cannot open it",
    ),
    # what a red-team run found failing late (after Ray started) or with a traceback
    "grace_period beyond the evaluations": (
        lambda t: ["--space", _space(t, _grace_beyond)],
        "scheduler.grace_period: 9 evaluations is beyond a trial's last: it has 4",
    ),
    "--select of no URI": (lambda t: ["--space", SMOKE, "--select", ","], "--select: must name at least one target"),
    "search.seed beyond NumPy's": (lambda t: ["--space", _space(t, _seed_too_large)], "search.seed: must be <= "),
    "a garbage journal study file": (
        lambda t: ["--space", SMOKE, "--study-storage", _write(t, "s.journal", b"\x00\x01 not a journal {")],
        "s.journal is not an Optuna journal entry",
    ),
    "a tracking URI that is not SQLite": (
        lambda t: ["--space", SMOKE, "--tracking-uri", f"sqlite:///{_write(t, 'notdb.db', 'hello, not a database')}"],
        "notdb.db is not an SQLite database",
    ),
    "a postgresql tracking URI without its driver": (
        lambda t: ["--space", SMOKE, "--tracking-uri", "postgresql://postgres@127.0.0.1:5432/postgres"],
        "its database driver is not installed (No module named 'psycopg'); name an installed one",
    ),
    "a PostgreSQL tracking URI that does not answer": (
        lambda t: ["--space", SMOKE, "--tracking-uri", f"postgresql+psycopg2://u:pw@127.0.0.1:{free_port()}/x"],
        "MLflow tracking database postgresql+psycopg2://u:***@127.0.0.1:",
    ),
    "ADIN_RETRY_BUDGET_S not a number": (
        lambda t: (os.environ.__setitem__("ADIN_RETRY_BUDGET_S", "abc"), ["--space", SMOKE])[1],
        "'abc' is not a number of seconds (from --retry-budget or ADIN_RETRY_BUDGET_S)",
    ),
    "--ray-address at a port that is not Ray": (_not_ray_address, "something answers at 127.0.0.1:"),
    "--resume outside the storage": (
        lambda t: ["--space", SMOKE, "--resume", "../../x"],
        "--resume '../../x': a sweep name uses ASCII letters",
    ),
    "--name not ASCII": (lambda t: ["--space", SMOKE, "--name", "ñame"], "--name 'ñame': a sweep name uses ASCII"),
    "a float step wider than its range": (
        lambda t: ["--space", _space(t, _step_too_wide)],
        "parameters.lr_heads.step: 0.5 is wider than the range 0.01..0.3",
    ),
    "--seeds past its bound": (lambda t: ["--space", SMOKE, "--seeds", "1000000000"], "--seeds: must be <= 32"),
    "--verify-seeds past its bound": (
        lambda t: ["--space", SMOKE, "--verify-seeds", "1000"],
        "--verify-seeds: must be <= 64",
    ),
    "--num-samples past its bound": (
        lambda t: ["--space", SMOKE, "--num-samples", "1000000000"],
        "--num-samples: must be <= 100000",
    ),
    "an image size past its bound": (lambda t: ["--space", _space(t, _huge_image)], "image_height must be <= 2048"),
}


@pytest.mark.parametrize("case", sorted(SWEEP_CASES))
def test_sweep_input_mistakes_fail_before_ray(tmp_path, capsys, monkeypatch, case):
    import ray

    monkeypatch.setenv("ADIN_RETRY_BUDGET_S", "300")  # a case may set it; monkeypatch puts it back
    from orchestrator.sweep import main

    make_args, message = SWEEP_CASES[case]
    args = make_args(tmp_path)
    base = {
        "--storage": str(tmp_path / "sweeps"),
        "--data-root": str(tmp_path / "data"),
        "--tracking-uri": f"sqlite:///{tmp_path}/m.db",
    }
    for flag, value in base.items():
        if flag not in args:
            args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err  # one line
    assert not ray.is_initialized()


def test_resume_refuses_different_settings_and_replays_its_own(tmp_path, capsys):
    """The first run's experiment flags are stored with the sweep; --resume replays them and refuses others."""
    from orchestrator.plan import SWEEP_FILE, make_plan, write_sweep_file
    from orchestrator.sweep import parse_args

    base = [
        "--space",
        SMOKE,
        "--storage",
        str(tmp_path / "s"),
        "--data-root",
        str(tmp_path / "d"),
        "--tracking-uri",
        f"sqlite:///{tmp_path}/m.db",
    ]
    plan = make_plan(parse_args([*base, "--name", "smoke-r", "--epochs", "3", "--num-samples", "2"]))
    write_sweep_file(plan)
    assert os.path.exists(tmp_path / "s" / "smoke-r" / SWEEP_FILE)
    assert plan.space.training.epochs == 3 and plan.space.search.num_samples == 2
    from orchestrator.plan import PlanError

    with pytest.raises(
        PlanError, match=r"keeps its first run's settings; drop --epochs 5.0 \(the sweep ran with 3.0\)"
    ):
        make_plan(parse_args([*base, "--resume", "smoke-r", "--epochs", "5"]))
    # the same value is accepted; no value replays the stored one (restorability is checked last: none here)
    with pytest.raises(PlanError, match="no restorable sweep state"):
        make_plan(parse_args([*base, "--resume", "smoke-r", "--epochs", "3"]))


def test_resume_refuses_an_edited_space_and_its_command_carries_every_store(tmp_path):
    """A space file edited under the same name once resumed with other trials and epochs; the printed --resume
    command kept --storage but dropped the other stores, so it found another tracking database."""
    import shutil

    from orchestrator.plan import PlanError, make_plan, write_sweep_file
    from orchestrator.sweep import parse_args

    space = str(tmp_path / "smoke.yaml")
    shutil.copy(SMOKE, space)
    base = [
        "--space",
        space,
        "--storage",
        str(tmp_path / "s"),
        "--data-root",
        str(tmp_path / "d"),
        "--tracking-uri",
        f"sqlite:///{tmp_path}/m.db",
        "--study-storage",
        str(tmp_path / "study.journal"),
    ]
    plan = make_plan(parse_args([*base, "--name", "smoke-e"]))
    write_sweep_file(plan)
    command = plan.resume_command()
    for flag, value in (
        ("--storage", tmp_path / "s"),
        ("--data-root", tmp_path / "d"),
        ("--tracking-uri", f"sqlite:///{tmp_path}/m.db"),
        ("--study-storage", tmp_path / "study.journal"),
    ):
        assert f"{flag} {value}" in command, command
    with open(space, "a") as fh:
        fh.write("# edited\n")
    with pytest.raises(PlanError, match="smoke.yaml has changed since the sweep started"):
        make_plan(parse_args([*base, "--resume", "smoke-e"]))


def test_a_resume_command_names_no_store_given_by_default(tmp_path, monkeypatch):
    from orchestrator.plan import make_plan
    from orchestrator.sweep import parse_args

    monkeypatch.chdir(tmp_path)
    for key in ("ADIN_STORAGE", "ADIN_DATA_ROOT", "MLFLOW_TRACKING_URI", "ADIN_STUDY_STORAGE", "RAY_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    plan = make_plan(parse_args(["--space", SMOKE, "--name", "smoke-d"]))
    assert plan.resume_command() == f"python -m orchestrator.sweep --space {SMOKE} --resume smoke-d"


def test_plan_paths_are_absolute(tmp_path, monkeypatch):
    """Relative storage, data root and tracking paths mean the same place in Ray's per-trial working folders."""
    from orchestrator.plan import make_plan
    from orchestrator.sweep import parse_args

    monkeypatch.chdir(tmp_path)
    plan = make_plan(
        parse_args(
            ["--space", SMOKE, "--storage", "rel/s", "--data-root", "rel/d", "--tracking-uri", "sqlite:///rel/m.db"]
        )
    )
    assert plan.storage == str(tmp_path / "rel" / "s") and plan.data_root == str(tmp_path / "rel" / "d")
    assert plan.tracking_uri == f"sqlite:///{tmp_path}/rel/m.db"
    assert all(os.path.isabs(u) for u in [plan.source, *[t.uri for t in plan.select + plan.report]])
    assert [t.name for t in plan.select] == ["synthetic-tiny-select"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--register", "a/b"], "--register 'a/b': a model name is letters"),
        (["--export", "/proc/adin/x"], "--export /proc/adin/x: cannot create /proc/adin"),
        (["--export", "/proc/x"], "--export /proc/x: cannot write in /proc"),
        (["--sweep", "nope"], "no sweep named 'nope'"),
        (
            ["--tracking-uri", "sqlite:////tmp/adin-no-such-folder/m.db"],
            "no tracking database at /tmp/adin-no-such-folder",
        ),
    ],
)
def test_best_input_mistakes_fail_before_any_export(tmp_path, capsys, args, message):
    from orchestrator.best import main
    from orchestrator.tracking import TrackingQueue

    TrackingQueue(f"sqlite:///{tmp_path}/m.db").client.search_experiments()  # an (empty) tracking database
    full = ["--export", str(tmp_path / "out"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    for i in range(0, len(args), 2):
        if args[i] in full:
            full[full.index(args[i]) + 1] = args[i + 1]
        else:
            full += args[i : i + 2]
    assert main(full) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "out") and not os.path.exists("/tmp/adin-no-such-folder")


def test_inspect_decodes_every_image_so_a_damaged_image_with_a_recomputed_hash_is_found(tmp_path, capsys):
    import hashlib
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from orchestrator.data import main

    assert main(["synth", "--preset", "tiny", "--out", str(tmp_path / "trees")]) == 0
    src = next(p for p in (tmp_path / "trees").iterdir() if "source" in p.name)
    assert (
        main(
            [
                "shard",
                "--format",
                "market1501",
                "--src",
                str(src),
                "--dest",
                str(tmp_path / "store"),
                "--name",
                "tiny-src",
                "--version",
                "v1",
            ]
        )
        == 0
    )
    version = tmp_path / "store" / "tiny-src" / "v1"
    assert main(["inspect", str(version)]) == 0
    capsys.readouterr()
    manifest = json.loads((version / "manifest.json").read_text())
    entry = manifest["splits"]["query"]["files"][0]
    path = version / entry["path"]
    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    images[0] = images[0][:20] + b"\x00" * 40  # a damaged image...
    table = table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    pq.write_table(table, path)
    entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()  # ...under a recomputed hash
    (version / "manifest.json").write_text(json.dumps(manifest))
    assert main(["inspect", str(version)]) == 2
    err = capsys.readouterr().err
    assert "cannot decode tiny-src/v1:" in err and "(split query)" in err and "Traceback" not in err


def test_data_cli_mistakes(tmp_path, capsys):
    from orchestrator.data import main
    from tests.helpers import make_market

    src = make_market(str(tmp_path / "src"))
    dest_file = _write(tmp_path, "dest", "x")
    assert main(["shard", "--format", "market1501", "--src", src, "--dest", dest_file]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    for content, message in (
        ("[1, 2]", "is not a manifest (a JSON object), it holds a list"),
        ('{"schema_version": 1}', "not a complete manifest (missing ['dataset'"),
    ):
        folder = tmp_path / "store" / "x" / "v1"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").write_text(content)
        assert main(["inspect", str(folder)]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "beta=[1,"], "cannot read value '[1,'"),
        (["--set", "device=cuda"], "CUDA is not available"),
        (["--set", "adv_loss=cane"], "the paper's CaNE is adv_loss=ne with calibration=class_prior"),
        (["--gen", "colour=red"], "colour"),
    ],
)
def test_adin_core_cli_mistakes(capsys, monkeypatch, args, message):
    import torch

    from adin_core.__main__ import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        main(["--preset", "tiny", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_local_ray_polls_train_workers_faster_unless_the_environment_says_otherwise(monkeypatch):
    from orchestrator.ray_session import LOCAL_HEALTH_CHECK_INTERVAL_S, local_train_env

    key = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    monkeypatch.delenv(key, raising=False)
    assert local_train_env() == {key: LOCAL_HEALTH_CHECK_INTERVAL_S}
    assert float(LOCAL_HEALTH_CHECK_INTERVAL_S) < 2.0  # Ray's default, which held every trial's start and end
    monkeypatch.setenv(key, "3")
    assert local_train_env() == {key: "3"}


def test_free_ports_are_outside_the_ports_client_sockets_and_ray_workers_take():
    from orchestrator.net import RAY_WORKER_PORTS, ephemeral_range, free_port

    low, _ = ephemeral_range()
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)  # never the same one twice in a process
    assert all(RAY_WORKER_PORTS[1] < p < low for p in ports), ports
    import socket

    for p in ports[:3]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))  # free when handed out
