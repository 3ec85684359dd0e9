import json
import os
import time

import numpy as np
import pytest

from adin_core.data.datasets import shard_dataset, write_synthetic
from adin_core.data.layouts import LayoutError, read_layout
from adin_core.data.memory import ImageDecodeError
from adin_core.data.shards import ShardError, ShardSet, write_shards
from adin_core.data.storage import StorageError
from adin_core.data.synthetic import generate_benchmark, write_layout
from adin_core.nuisance import NuisanceError
from orchestrator.data import main as data_cli
from tests.helpers import LAYOUT_BUILDERS, make_market, make_msmt


# --- readers of the real layouts ------------------------------------------------------------------------------
def test_market1501_conventions(tmp_path):
    recs = read_layout("market1501", make_market(str(tmp_path)))
    by_name = {os.path.basename(r.path): r for r in recs}
    assert "-1_c1s1_000401_03.jpg" not in by_name  # junk skipped
    r = by_name["0002_c1s1_000451_03.jpg"]
    assert (r.pid, r.camid, r.frame, r.split, r.timeperiod) == (2, 0, 451, "train", None)
    assert by_name["0000_c1s1_000151_01.jpg"].split == "gallery"  # distractors kept in the gallery
    assert by_name["0007_c6s1_013521_03.jpg"].camid == 5
    assert [r.split for r in recs].count("query") == 2


def test_dukemtmc_conventions(tmp_path):
    recs = read_layout("dukemtmc", make_duke_tree(tmp_path))
    r = next(r for r in recs if r.path.endswith("0003_c8_f0040436.jpg"))
    assert (r.pid, r.camid, r.frame) == (3, 7, 40436)


def make_duke_tree(tmp_path):
    return LAYOUT_BUILDERS["dukemtmc"](str(tmp_path))


@pytest.mark.parametrize("version", ["MSMT17_V1", "MSMT17_V2"])
def test_msmt17_conventions(tmp_path, version):
    recs = read_layout("msmt17", make_msmt(str(tmp_path), version))
    assert {r.split for r in recs} == {"train", "val", "query", "gallery"}
    r = next(r for r in recs if r.path.endswith("0001_000_12_0113afternoon_0790_0.jpg"))
    assert (r.pid, r.camid, r.timeperiod, r.frame, r.split) == (1, 11, 2, 790, "train")
    assert os.path.isfile(r.path)
    q = next(r for r in recs if r.split == "query")
    assert (q.camid, q.timeperiod) == (14, 2)


def test_veri776_and_vehicleid_conventions(tmp_path):
    veri = read_layout("veri776", LAYOUT_BUILDERS["veri776"](str(tmp_path / "v")))
    r = next(r for r in veri if r.path.endswith("0002_c020_00081265_1.jpg"))
    assert (r.pid, r.camid, r.frame) == (2, 19, 81265)
    vid = read_layout("vehicleid", LAYOUT_BUILDERS["vehicleid"](str(tmp_path / "i")))
    assert {r.split for r in vid} == {"train", "test800", "test1600", "test2400", "test3200"}
    assert all(r.camid == 0 for r in vid) and all(os.path.isfile(r.path) for r in vid)


def test_unknown_format(tmp_path):
    with pytest.raises(LayoutError, match="unknown dataset format 'cuhk03'"):
        read_layout("cuhk03", str(tmp_path))


def test_missing_list_file_is_named(tmp_path):
    root = make_msmt(str(tmp_path))
    os.remove(os.path.join(root, "MSMT17_V1", "list_val.txt"))
    with pytest.raises(LayoutError, match="missing list file .*list_val.txt"):
        read_layout("msmt17", root)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(LayoutError, match="no dataset found under"):
        read_layout("market1501", str(tmp_path))


def test_unparseable_file_name_is_named(tmp_path):
    root = make_market(str(tmp_path))
    bad = os.path.join(root, "Market-1501-v15.09.15", "query", "person_cam1.jpg")
    open(bad, "wb").close()
    with pytest.raises(LayoutError, match="person_cam1.jpg: file name does not follow"):
        read_layout("market1501", root)


def test_msmt_bad_time_field_is_named(tmp_path):
    root = make_msmt(str(tmp_path))
    lst = os.path.join(root, "MSMT17_V1", "list_query.txt")
    with open(lst, "w") as fh:
        fh.write("0000/0000_000_15_0302evening_1020_0.jpg 0\n")
    with pytest.raises(LayoutError, match=r"list_query.txt:1: .*'0302evening'"):
        read_layout("msmt17", root)


# --- shards: round trips ----------------------------------------------------------------------------------------
def _round_trip(records, dest, name):
    manifest = write_shards(records, dest, name, "v1", fmt=name)
    shards = ShardSet.open(os.path.join(dest, name, "v1"))
    back = {s: shards.table(s) for s in shards.splits}
    for split, table in back.items():
        assert manifest["splits"][split]["images"] == table.num_rows
    total = sum(t.num_rows for t in back.values())
    assert total == len(records)
    pairs = sorted((r.pid, r.camid, r.timeperiod if r.timeperiod is not None else -1) for r in records)
    got = sorted(
        zip(
            *(
                np.concatenate([t.column(c).fill_null(-1).to_numpy() for t in back.values()])
                for c in ("pid", "camid", "timeperiod")
            )
        )
    )
    assert [tuple(map(int, p)) for p in got] == pairs
    # image bytes are the original files
    row = back[shards.splits[0]].slice(0, 1).to_pylist()[0]
    orig = next(r for r in records if r.path.endswith(row["source_path"]))
    assert open(orig.path, "rb").read() == row["image"]
    return shards


@pytest.mark.parametrize("fmt", sorted(LAYOUT_BUILDERS))
def test_every_layout_round_trips_through_shards(tmp_path, fmt):
    records = read_layout(fmt, LAYOUT_BUILDERS[fmt](str(tmp_path / "src")))
    shards = _round_trip(records, str(tmp_path / "store"), fmt)
    assert "val" in shards.splits  # a validation split always exists (list_val or held out)
    priors = shards.manifest["priors"]
    if fmt == "vehicleid":
        assert priors == {}  # no cameras, no time: no nuisance label
    else:
        assert abs(sum(priors["camera"]["prior"]) - 1) < 1e-9
    assert ("time" in priors) == (fmt == "msmt17")


@pytest.mark.parametrize("layout", ["market1501", "msmt17"])
def test_synthetic_layouts_round_trip(tmp_path, layout):
    bench = generate_benchmark("tiny", seed=1)
    root = write_layout(bench.source, str(tmp_path / "src"), layout)
    records = read_layout(layout, os.path.dirname(root))
    assert len([r for r in records if r.split in ("train", "val")]) == len(bench.source.train)
    assert len([r for r in records if r.split == "query"]) == len(bench.source.query)
    shards = _round_trip(records, str(tmp_path / "store"), layout)
    # priors in the manifest match what training computes
    data = shards.training_data("camera", (32, 16))
    np.testing.assert_allclose(data.priors["camera"], shards.manifest["priors"]["camera"]["prior"])
    if layout == "msmt17":
        assert shards.manifest["has_time"] and "camera_x_time" in shards.manifest["priors"]
    # decoded images come back at the requested size and, though JPEG (q95, chroma-subsampled) moves noisy 32x16
    # pixels by ~11 levels, each is nearer to its own generated image than to any other: the index in the
    # generated split is the 3rd field (Market-1501) or the 2nd (MSMT17) of the file name
    decoded = data.train.images[np.arange(len(data.train))].astype(np.int16)
    assert decoded.shape == (len(data.train), 32, 16, 3) and decoded.dtype == np.int16
    generated = bench.source.train.images.astype(np.int16)
    field = 2 if layout == "market1501" else 1
    own = [int(os.path.basename(n).split("_")[field]) for n in data.train.images.names]
    nearest = [int(np.abs(generated - img[None]).mean(axis=(1, 2, 3)).argmin()) for img in decoded]
    assert nearest == own


def test_synthetic_shards_hold_exactly_the_generated_pixels(tmp_path):
    """`synthetic:` URIs are sharded as PNG: training from shards sees the generator's arrays, bit for bit."""
    from adin_core.data.datasets import resolve_dataset, synthetic_uri

    bench = generate_benchmark("tiny", seed=3, num_cameras=5)
    uri = synthetic_uri("tiny", "source", 3, num_cameras=5)
    assert uri == "synthetic:tiny/source?seed=3&num_cameras=5"
    shards = ShardSet.open(resolve_dataset(uri, str(tmp_path)))
    target = shards.eval_target((32, 16))
    np.testing.assert_array_equal(target.query.images[np.arange(len(target.query))], bench.source.query.images)
    np.testing.assert_array_equal(target.gallery.pids, bench.source.gallery.pids)
    train, val = shards.arrays("train", (32, 16)), shards.arrays("val", (32, 16))
    assert len(train) + len(val) == len(bench.source.train) and len(val) == len(np.unique(bench.source.train.pids))
    # the other two domains were made with it, under names that carry the generator's settings and seed
    again = resolve_dataset(synthetic_uri("tiny", "report", 3, num_cameras=5), str(tmp_path))
    assert os.path.basename(os.path.dirname(again)) == "synthetic-tiny-report"
    other_seed = resolve_dataset(synthetic_uri("tiny", "report", 4, num_cameras=5), str(tmp_path))
    assert other_seed != again


@pytest.mark.parametrize(
    "uri,match",
    [
        ("synthetic:huge/source", "expected synthetic:<preset>"),
        ("synthetic:tiny/train", "expected synthetic:<preset>"),
        ("synthetic:tiny/source?seed=-1", "seed must be an integer >= 0"),
        ("synthetic:tiny/source?colour=red", "'colour' is neither seed nor a generator setting"),
        ("synthetic:tiny/source?tint=2", "tint must be in"),
    ],
)
def test_bad_synthetic_uris_name_the_problem(tmp_path, uri, match):
    from adin_core.data.datasets import resolve_dataset

    with pytest.raises(LayoutError, match=match):
        resolve_dataset(uri, str(tmp_path))


def test_synth_command_writes_source_and_two_targets(tmp_path):
    info = write_synthetic("tiny", str(tmp_path / "b"))
    assert set(info["domains"]) == {"source", "select", "report"} and info["layout"] == "market1501"
    with pytest.raises(FileExistsError):
        write_synthetic("tiny", str(tmp_path / "b"))
    pids = {}
    cams = {}
    for name, d in info["domains"].items():
        recs = read_layout("market1501", os.path.dirname(os.path.join(tmp_path / "b", d["path"])))
        pids[name] = {r.pid for r in recs}
        assert d["query"] == sum(r.split == "query" for r in recs)
        cams[name] = len({r.camid for r in recs})
    assert cams == {"source": 4, "select": 4, "report": 4}


def test_market_layout_refuses_more_than_six_cameras(tmp_path):
    bench = generate_benchmark("hard", seed=0, train_ids=4, test_ids=4)
    with pytest.raises(ValueError, match="at most 6 cameras"):
        write_layout(bench.source, str(tmp_path), "market1501")


def files_on_disk(shards: ShardSet) -> set[str]:
    return {
        os.path.relpath(os.path.join(d, f), shards.location.path)
        for d, _, fs in os.walk(shards.location.path)
        for f in fs
    }


# --- shards: bad input and no damage -------------------------------------------------------------------------
def test_existing_version_is_refused_before_any_work(tmp_path, capsys):
    src = make_market(str(tmp_path / "src"))
    dest = str(tmp_path / "store")
    assert data_cli(["shard", "--format", "market1501", "--src", src, "--dest", dest]) == 0
    before = open(os.path.join(dest, "market1501", "v1", "manifest.json")).read()
    os.remove(os.path.join(src, "Market-1501-v15.09.15", "query", "0001_c1s1_001051_00.jpg"))
    assert data_cli(["shard", "--format", "market1501", "--src", src, "--dest", dest]) == 2
    assert "already exists" in capsys.readouterr().err
    assert open(os.path.join(dest, "market1501", "v1", "manifest.json")).read() == before
    # with --overwrite the new version replaces the old, and only its files remain
    assert data_cli(["shard", "--format", "market1501", "--src", src, "--dest", dest, "--overwrite"]) == 0
    shards = ShardSet.open(os.path.join(dest, "market1501", "v1"))
    assert shards.manifest["splits"]["query"]["images"] == 1
    assert files_on_disk(shards) == set(shards.file_hashes()) | {"manifest.json"}


def test_undecodable_image_fails_by_name_and_damages_nothing(tmp_path):
    src = make_market(str(tmp_path / "src"))
    dest = str(tmp_path / "store")
    shard_dataset("market1501", src, dest, show_progress=False)
    before = ShardSet.open(os.path.join(dest, "market1501", "v1")).file_hashes()
    bad = os.path.join(src, "Market-1501-v15.09.15", "query", "0003_c3s3_075694_00.jpg")
    with open(bad, "wb") as fh:
        fh.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageDecodeError, match="0003_c3s3_075694_00.jpg"):
        shard_dataset("market1501", src, dest, overwrite=True, show_progress=False)
    after = ShardSet.open(os.path.join(dest, "market1501", "v1"))
    assert after.file_hashes() == before
    for split in after.splits:
        after.table(split)  # still complete and verified


def test_interrupted_run_leaves_no_complete_looking_dataset(tmp_path):
    src = make_market(str(tmp_path / "src"))
    bad = os.path.join(src, "Market-1501-v15.09.15", "query", "0003_c3s3_075694_00.jpg")
    with open(bad, "wb") as fh:
        fh.write(b"garbage")
    dest = str(tmp_path / "store")
    with pytest.raises(ImageDecodeError):
        shard_dataset("market1501", src, dest, show_progress=False)
    # the parts written before the failure are gone, and so are the folders made for them
    assert not os.path.exists(os.path.join(dest, "market1501"))
    with pytest.raises(ShardError, match="no manifest.json"):
        ShardSet.open(os.path.join(dest, "market1501", "v1"))


@pytest.mark.parametrize(
    "tree,fmt",
    [("market1501", "dukemtmc"), ("dukemtmc", "market1501"), ("market1501", "veri776"), ("veri776", "market1501")],
)
def test_a_tree_read_with_the_wrong_format_is_refused(tmp_path, tree, fmt):
    src = LAYOUT_BUILDERS[tree](str(tmp_path / "src"))
    if tree != fmt:  # give the reader the folder names it looks for, so only the file names can tell
        from adin_core.data.layouts import market1501, veri776

        folders = {"market1501": market1501.FOLDERS, "dukemtmc": market1501.FOLDERS, "veri776": veri776.FOLDERS}
        base = next(os.path.join(src, d) for d in os.listdir(src))
        wanted = {"market1501": "Market-1501-v15.09.15", "dukemtmc": "DukeMTMC-reID", "veri776": "VeRi"}[fmt]
        os.rename(base, os.path.join(src, wanted))
        for split, folder in folders[tree].items():
            os.rename(os.path.join(src, wanted, folder), os.path.join(src, wanted, folders[fmt][split]))
    with pytest.raises(LayoutError, match="does not follow the .* pattern"):
        read_layout(fmt, src)


@pytest.mark.parametrize(
    "fmt,missing",
    [
        ("msmt17", "MSMT17_V1/test/0000/0000_000_15_0302afternoon_1020_0.jpg"),
        ("vehicleid", "VehicleID_V1.0/image/0000011.jpg"),
    ],
)
def test_a_listed_file_that_is_missing_is_named_before_any_image_is_read(tmp_path, fmt, missing):
    src = LAYOUT_BUILDERS[fmt](str(tmp_path / "src"))
    os.remove(os.path.join(src, missing))
    with pytest.raises(LayoutError, match=r"list_?\w*\.txt:\d+: .* is listed but missing"):
        read_layout(fmt, src)


def test_two_writers_of_one_version_never_damage_it(tmp_path):
    """Two sweeps first using the same dataset both shard it: the one that commits second keeps the first's
    version (without --overwrite), removes only its own parts, and says so."""
    src = make_market(str(tmp_path / "src"))
    records = read_layout("market1501", src)
    dest = str(tmp_path / "store")
    done = []

    def other_writer_finishes_meanwhile(_n: int) -> None:
        if not done:
            done.append(write_shards(records, dest, "market1501", "v1", fmt="market1501", source=src))

    with pytest.raises(ShardError, match="completed by another run"):
        write_shards(
            records, dest, "market1501", "v1", fmt="market1501", source=src, progress=other_writer_finishes_meanwhile
        )
    shards = ShardSet.open(os.path.join(dest, "market1501", "v1"))
    assert shards.manifest["created_at"] == done[0]["created_at"]
    for split in shards.splits:
        shards.table(split)  # every listed part is there and verified
    assert files_on_disk(shards) == set(shards.file_hashes()) | {"manifest.json"}


def test_overwrite_removes_the_replaced_parts_and_old_orphans_only(tmp_path):
    src = make_market(str(tmp_path / "src"))
    dest = str(tmp_path / "store")
    first = shard_dataset("market1501", src, dest, show_progress=False)
    root = os.path.join(dest, "market1501", "v1")
    young = os.path.join(root, "train", "part-00000-inflight.parquet")  # another writer, still working
    old = os.path.join(root, "train", "part-00000-crashed0.parquet")  # an interrupted run, hours ago
    for path in (young, old):
        open(path, "wb").write(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    shard_dataset("market1501", src, dest, overwrite=True, show_progress=False)
    listed_before = {f["path"] for s in first["splits"].values() for f in s["files"]}
    assert not any(os.path.exists(os.path.join(root, p)) for p in listed_before)
    assert os.path.exists(young) and not os.path.exists(old)


def test_sha256_mismatch_is_named(tmp_path):
    src = make_market(str(tmp_path / "src"))
    dest = str(tmp_path / "store")
    shard_dataset("market1501", src, dest, show_progress=False)
    shards = ShardSet.open(os.path.join(dest, "market1501", "v1"))
    part = shards.manifest["splits"]["gallery"]["files"][0]["path"]
    with open(os.path.join(shards.location.path, part), "r+b") as fh:
        fh.seek(100)
        fh.write(b"X")
    with pytest.raises(ShardError, match=f"{part}: sha256 .* differs from the manifest"):
        shards.table("gallery")


def test_missing_manifest_and_bad_schema(tmp_path):
    with pytest.raises(ShardError, match="no manifest.json"):
        ShardSet.open(str(tmp_path / "nothing" / "v1"))
    d = tmp_path / "ds" / "v1"
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ShardError, match="schema_version 99"):
        ShardSet.open(str(d))


def test_vehicleid_refuses_camera_nuisance(tmp_path):
    records = read_layout("vehicleid", LAYOUT_BUILDERS["vehicleid"](str(tmp_path / "src")))
    write_shards(records, str(tmp_path / "store"), "vehicleid", "v1", fmt="vehicleid")
    shards = ShardSet.open(str(tmp_path / "store" / "vehicleid" / "v1"))
    with pytest.raises(NuisanceError, match="at least two cameras"):
        shards.training_data("camera", (32, 16))
    target = shards.eval_target((32, 16))
    assert target.gallery is None and target.name.endswith("test800")


# --- S3 ----------------------------------------------------------------------------------------------------------
def test_shards_on_s3_api_server(tmp_path, s3_env):
    src = make_msmt(str(tmp_path / "src"))
    uri = f"s3://{s3_env}/datasets"
    assert data_cli(["shard", "--format", "msmt17", "--src", src, "--dest", uri]) == 0
    shards = ShardSet.open(f"{uri}/msmt17/v1")
    local = write_shards(read_layout("msmt17", src), str(tmp_path / "store"), "msmt17", "v1", fmt="msmt17")
    assert shards.manifest["splits"]["train"]["images"] == local["splits"]["train"]["images"]
    assert shards.manifest["priors"] == local["priors"]
    data = shards.training_data("camera+time", (32, 16))
    assert data.num_identities == 2 and set(data.priors) == {"camera", "time"}
    # camera 3 (index 2) appears only in list_val: it is a class with prior 0, so validation can score it
    assert data.labeler.cameras == (0, 2, 4, 11) and data.priors["camera"][1] == 0
    assert data.val.images[np.arange(len(data.val))].shape == (2, 32, 16, 3)
    assert data_cli(["shard", "--format", "msmt17", "--src", src, "--dest", uri]) == 2  # refused: exists


def test_s3_missing_credentials(monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(StorageError, match="AWS_ACCESS_KEY_ID"):
        ShardSet.open("s3://bucket/ds/v1")


def test_s3_unreachable_endpoint_fails_fast(monkeypatch):
    import time

    from tests.helpers import free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    t = time.time()
    with pytest.raises(StorageError, match="AWS_ENDPOINT_URL.* is unreachable"):
        ShardSet.open("s3://bucket/ds/v1")
    assert time.time() - t < 10


def test_s3_missing_bucket(s3_env):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' .* does not exist"):
        ShardSet.open("s3://no-such-bucket/ds/v1")


# --- decoding ------------------------------------------------------------------------------------------------------
def test_batch_decoding_matches_pil_and_handles_png(tmp_path):
    import io

    from PIL import Image

    from adin_core.data.memory import EncodedImages, decode_image
    from tests.helpers import jpeg_bytes

    blobs = [jpeg_bytes(i, size=(32, 16)) for i in range(5)] + [jpeg_bytes(9, size=(40, 20))]
    png = io.BytesIO()
    Image.fromarray(np.full((32, 16, 3), 200, np.uint8)).save(png, format="PNG")
    blobs.append(png.getvalue())
    enc = EncodedImages(blobs, (32, 16))
    batch = enc[np.arange(len(blobs))]
    assert batch.shape == (7, 32, 16, 3) and batch.dtype == np.uint8
    for i in range(5):  # same native size: bit-exact or within JPEG decoder rounding of PIL's decode
        assert np.abs(batch[i].astype(int) - decode_image(blobs[i], None).astype(int)).max() <= 2
    assert np.all(batch[6] == 200)  # PNG through the fallback
    resized = decode_image(blobs[5], (32, 16)).astype(int)  # a different native size is resized
    assert np.abs(batch[5].astype(int) - resized).mean() < 12


def test_undecodable_image_at_load_time_is_named():
    from adin_core.data.memory import EncodedImages

    enc = EncodedImages([b"\xff\xd8 broken"], (8, 4), names=["market1501/v1:query/0001_c1s1_000001_00.jpg"])
    with pytest.raises(ImageDecodeError, match="0001_c1s1_000001_00.jpg"):
        enc[np.arange(1)]


def test_worker_parts_are_disjoint_reshuffled_and_deterministic():
    from adin_core.data.memory import TrainingData, held_out_val

    bench = generate_benchmark("tiny", seed=2)
    train, val = held_out_val(bench.source.train)
    data = TrainingData(train, val, "camera")
    pid_of = {}  # identify images by their pixels' hash
    for i in range(len(train)):
        pid_of.setdefault(train.images[i].tobytes(), i)

    def epoch_images(epoch, rank, world, seed=0):
        out = []
        for b in data.batches(epoch, 8, rank=rank, world_size=world, seed=seed):
            out += [pid_of[img.permute(1, 2, 0).numpy().tobytes()] for img in b.images]
        return out

    r0, r1 = epoch_images(0, 0, 2), epoch_images(0, 1, 2)
    assert set(r0).isdisjoint(r1) and len(r0) == len(r1)  # equal length keeps workers in lock-step
    assert epoch_images(0, 0, 2) == r0  # deterministic given (seed, epoch)
    assert epoch_images(1, 0, 2) != r0  # reshuffled per epoch
    assert epoch_images(0, 0, 2, seed=1) != r0
    resumed = []
    for b in data.batches(0, 8, rank=0, world_size=2, start=2):
        resumed += [pid_of[img.permute(1, 2, 0).numpy().tobytes()] for img in b.images]
    assert resumed == r0[16:]  # `start` skips whole batches: a resumed run sees what it would have seen
