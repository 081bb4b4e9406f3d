"""The stage protocol end to end: nothing lost, nothing wrong.

Real files, a real S3 protocol server (moto on 127.0.0.1), real ``activeft`` processes killed with
SIGKILL: overwrite removes only what a stage wrote and swaps a complete new output in; one writer
per output (a lease with a heartbeat); resume never returns another run's result; empty and root
outputs are refused; Ray never joins a foreign cluster; bad labels and bad inputs are one line.
"""

import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from images import write_images

import activeft
from activeft.cli import main
from activeft.embed import sources
from activeft.errors import LabelsError, OutputExistsError, ParameterError, SourceError, StoreError
from activeft.io import protocol, storage

pytestmark = pytest.mark.timeout(240)
CLI = [sys.executable, "-m", "activeft.cli"]
EXPIRY = 3  # seconds: the lease expiry the processes of these tests use
SLOW = ["--method", "activeft", "--iterations", "1000000", "--checkpoint-every", "5"]  # runs until killed


def child_env(**extra) -> dict:
    return {**os.environ, protocol.EXPIRY_ENV: str(EXPIRY), "ACTIVEFT_LOG_LEVEL": "WARNING", **extra}


@pytest.fixture(autouse=True)
def short_leases(monkeypatch):
    monkeypatch.setenv(protocol.EXPIRY_ENV, str(EXPIRY))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(0)
    x = (np.repeat(rng.normal(size=(6, 16)) * 3, 120, 0) + rng.normal(size=(720, 16))).astype(np.float32)
    pq.write_table(pa.table({"id": [f"img{i:04d}" for i in range(720)], "embedding": list(x),
                             "label": np.repeat(np.arange(6), 120)}), d / "emb.parquet")
    return activeft.import_embeddings(str(d / "emb.parquet"), str(d / "store"), partition_size=250)


def snapshot(uri: str) -> dict:
    """Every file of an output (its lease aside) and a hash of its bytes."""
    return {k: hashlib.sha256(storage.read_bytes(u)).hexdigest() for k, u in storage.list_files(uri)
            if not re.fullmatch(r"_work/lease\.json(\.lock)?", k)}


def spawn(argv: list, log, **env) -> subprocess.Popen:
    """A real ``activeft`` process (or other command), its stderr in the file ``log``."""
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, env=child_env(**env), stdout=f, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    return proc


def wait_for(condition, proc: subprocess.Popen | None = None, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended ({proc.returncode}) before {what}: "
                                 f"{open(proc.log).read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def cli(capsys, *argv) -> tuple[int, str]:
    """``activeft ARGV`` in this process: its exit code and its stderr, which must be one line."""
    capsys.readouterr()
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return code, err


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


# ---- 1. overwrite removes only what the stage wrote, and swaps a complete output in -------------------------------


@pytest.mark.parametrize("where", ["local", "s3"])
def test_overwrite_replaces_only_the_stage_files_and_never_a_foreign_directory(store, tmp_path, where, request,
                                                                               capsys):
    root = request.getfixturevalue("bucket") if where == "s3" else str(tmp_path)
    sel = f"{root}/sel"
    first = activeft.select(store, 10, method="random", output=sel)
    assert json.loads(storage.read_bytes(f"{sel}/_work/files.json"))["files"] == \
        ["selection.csv", "selection.json", "selection.parquet"]
    storage.write_bytes(f"{sel}/notes.txt", b"my own notes")
    before = snapshot(sel)
    code, err = cli(capsys, "select", store.uri, "--budget", "10", "--method", "random", "--seed", "1", "-o", sel,
                    "--overwrite")
    assert code == 1
    assert re.search(r"holds 'notes.txt', which no selection run wrote; --overwrite replaces only what activeft",
                     err)
    assert snapshot(sel) == before  # refused before anything was written
    storage.delete(f"{sel}/notes.txt")
    second = activeft.select(store, 10, method="random", seed=1, output=sel, overwrite=True)
    assert second.ids != first.ids and activeft.read_selection(sel).ids == second.ids
    assert sorted(snapshot(sel)) == ["_work/config.json", "_work/files.json", "selection.csv", "selection.json",
                                     "selection.parquet"]  # no staging, no journal, no old checkpoints

    # a directory with a _work/ folder of its own is not a store: overwrite refuses it whole
    user = f"{root}/mine"
    storage.write_bytes(f"{user}/_work/todo.txt", b"keep")
    storage.write_bytes(f"{user}/photo.png", b"keep too")
    np.save(tmp_path / "x.npy", np.eye(4, dtype=np.float32))
    (tmp_path / "ids.txt").write_text("a\nb\nc\nd\n")
    kept = snapshot(user)
    with pytest.raises(OutputExistsError, match="is not empty and is not an embedding store; refusing"):
        activeft.import_embeddings(str(tmp_path / "x.npy"), user, ids=str(tmp_path / "ids.txt"), overwrite=True)
    assert snapshot(user) == kept
    # a real store with the user's files kept beside it: refused, naming one, and nothing removed
    activeft.import_embeddings(str(tmp_path / "x.npy"), f"{root}/store", ids=str(tmp_path / "ids.txt"))
    storage.write_bytes(f"{root}/store/README.md", b"what this store is")
    kept = snapshot(f"{root}/store")
    with pytest.raises(OutputExistsError, match="holds 'README.md'"):
        activeft.import_embeddings(str(tmp_path / "x.npy"), f"{root}/store", ids=str(tmp_path / "ids.txt"),
                                   overwrite=True)
    assert snapshot(f"{root}/store") == kept


@pytest.mark.parametrize("where", ["local", "s3"])
def test_failed_overwrite_leaves_the_old_output_exactly_as_it_was(store, tmp_path, where, request):
    root = request.getfixturevalue("bucket") if where == "s3" else str(tmp_path)
    sel = f"{root}/sel"
    activeft.select(store, 10, method="kmeans", iterations=5, output=sel)
    before = snapshot(sel)
    nan = tmp_path / "nan"  # the same pool with one NaN row: found only while the new selection loads
    os.system(f"cp -r {store.uri} {nan}")
    t = pq.read_table(nan / "part-00001.parquet")
    x = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
    x[7, 2] = np.nan
    pq.write_table(t.set_column(1, "embedding", pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 16)),
                   nan / "part-00001.parquet")
    with pytest.raises(StoreError, match="1 embeddings with NaN/inf"):
        activeft.select(str(nan), 10, method="kmeans", iterations=5, output=sel, overwrite=True)
    assert snapshot(sel) == before
    with pytest.raises(StoreError, match="1 embeddings with NaN/inf"):  # and a new output is removed again
        activeft.select(str(nan), 10, method="kmeans", iterations=5, output=f"{root}/fresh")
    assert not storage.exists(f"{root}/fresh")


# ---- 2. one writer per output; resume only ever returns its own run ----------------------------------------------


@pytest.mark.slow
def test_a_second_writer_is_refused_and_a_killed_run_blocks_until_its_lease_expired(store, tmp_path, capsys):
    out = str(tmp_path / "sel")
    a = spawn([*CLI, "select", store.uri, "--budget", "15", "-o", out, "--seed", "0", *SLOW], tmp_path / "a.log")
    try:
        wait_for(lambda: os.path.exists(f"{out}/_work/select/state.pt"), a, what="a checkpoint of the first run")
        # the second writer (the probe: --seed 1 --overwrite while the first runs) is refused in one line
        code, err = cli(capsys, "select", store.uri, "--budget", "15", "-o", out, "--seed", "1", "--overwrite", *SLOW)
        assert code == 1
        assert "is being written by another run (" in err and f"pid {a.pid}" in err, err
        assert a.poll() is None  # and the first run goes on
    finally:
        kill(a)
    lease = json.loads((tmp_path / "sel" / "_work" / "lease.json").read_text())
    assert lease["pid"] == a.pid and {"owner", "host", "start", "heartbeat", "token"} <= set(lease)
    # killed: its lease is still there, so nobody writes until its heartbeat expired
    code, err = cli(capsys, "select", store.uri, "--budget", "15", "-o", out, "--seed", "0", "--resume", *SLOW)
    assert code == 1
    assert re.search(r"being written by another run .* retry in \d+ s, when its lease expires", err)
    time.sleep(EXPIRY + 0.5)
    with pytest.raises(OutputExistsError, match=r"different config .*seed=0 -> 1"):  # never the first run's result
        activeft.select(store, 15, output=out, resume=True, method="activeft", iterations=1000000, seed=1,
                        checkpoint_every=5)
    # the second writer, now alone, replaces it; a resume of the first run's settings is then refused
    second = activeft.select(store, 15, output=out, overwrite=True, method="activeft", iterations=30, seed=1)
    assert activeft.read_selection(out).ids == second.ids
    with pytest.raises(OutputExistsError, match=r"different config .*seed=1 -> 0"):
        activeft.select(store, 15, output=out, resume=True, method="activeft", iterations=1000000, seed=0,
                        checkpoint_every=5)


@pytest.mark.slow
def test_resume_continues_a_killed_run_to_the_clean_result(store, tmp_path):
    out = str(tmp_path / "sel")
    args = ["--budget", "15", "-o", out, "--method", "activeft", "--iterations", "150", "--checkpoint-every", "5"]
    a = spawn([*CLI, "select", store.uri, *args], tmp_path / "a.log")
    try:
        wait_for(lambda: os.path.exists(f"{out}/_work/select/state.pt"), a, what="a checkpoint")
    finally:
        kill(a)
    assert not os.path.exists(f"{out}/selection.json")
    time.sleep(EXPIRY + 0.5)
    resumed = activeft.select(store, 15, output=out, resume=True, method="activeft", iterations=150,
                              checkpoint_every=5)
    assert resumed.info["resumed_from_iteration"] > 0
    assert resumed.ids == activeft.select(store, 15, method="activeft", iterations=150).ids
    # the record of a finished output is checked whole: a result that is not this run's is refused
    files = json.loads((tmp_path / "sel" / "_work" / "files.json").read_text())
    (tmp_path / "sel" / "_work" / "files.json").write_text(json.dumps({**files, "settings": {
        **files["settings"], "seed": 1}}))
    with pytest.raises(OutputExistsError, match="holds the result of a run with a different config .*seed=1 -> 0"):
        activeft.select(store, 15, output=out, resume=True, method="activeft", iterations=150, checkpoint_every=5)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_killed_overwrite_keeps_the_old_output_and_the_next_run_cleans_up(store, tmp_path, where, request):
    root = request.getfixturevalue("bucket") if where == "s3" else str(tmp_path)
    src = store.uri
    if where == "s3":  # the pool on S3 too: the whole run talks to the object store
        s3fs.S3FileSystem().put(store.uri + "/", f"{root}/pool/", recursive=True)
        src = f"{root}/pool"
    sel = f"{root}/sel"
    old = activeft.select(src, 10, method="random", output=sel)
    before = snapshot(sel)
    b = spawn([*CLI, "select", src, "--budget", "10", "-o", sel, "--overwrite", *SLOW], tmp_path / "b.log")
    try:
        wait_for(lambda: any(k.endswith("_work/select/state.pt") for k, _ in storage.list_files(sel)), b,
                 what="a checkpoint of the overwriting run")
    finally:
        kill(b)
    after = snapshot(sel)
    assert {k: v for k, v in after.items() if not k.startswith("_work/next-")} == before  # exactly as it was
    assert any(k.startswith("_work/next-") for k in after)  # the dead run's staging
    assert activeft.read_selection(sel).ids == old.ids
    time.sleep(EXPIRY + 0.5)
    new = activeft.select(src, 10, method="random", seed=5, output=sel, overwrite=True)
    assert activeft.read_selection(sel).ids == new.ids != old.ids
    assert not any(k.startswith("_work/next-") for k in snapshot(sel))


@pytest.mark.slow
def test_a_swap_cut_short_by_sigkill_is_finished_by_the_next_run(store, tmp_path):
    sel = str(tmp_path / "sel")
    activeft.select(store, 10, method="random", output=sel)
    code = f"""
import os, signal, sys
from activeft.io import storage
moved = []
real = storage.move
def move(src, dst):
    real(src, dst)
    moved.append(dst)
    if len(moved) == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # dies in the middle of the swap
storage.move = move
import activeft
activeft.select({store.uri!r}, 10, method="random", seed=9, output={sel!r}, overwrite=True)
"""
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (tmp_path / "sel" / "_work" / "swap.json").exists() and not (tmp_path / "sel" / "selection.json").exists()
    time.sleep(EXPIRY + 0.5)
    done = activeft.select(store, 10, method="random", seed=9, output=sel, resume=True)  # finds the swap finished
    assert done.ids == activeft.select(store, 10, method="random", seed=9).ids
    assert not glob.glob(f"{sel}/_work/next-*") and not os.path.exists(f"{sel}/_work/swap.json")


@pytest.mark.slow
def test_lease_conditional_create_takeover_and_loss(bucket, tmp_path):
    for root in (str(tmp_path), bucket):
        uri = f"{root}/out"
        wins, errors = [], []

        def take(uri, wins, errors):
            try:
                wins.append(protocol.Lease.take(uri, "test"))
            except OutputExistsError as e:
                errors.append(str(e))

        threads = [threading.Thread(target=take, args=(uri, wins, errors)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1 and len(errors) == 3, (root, errors)  # a conditional create: exactly one writer
        held = wins[0]
        time.sleep(EXPIRY + 0.5)
        with pytest.raises(OutputExistsError, match="being written by another run"):
            protocol.Lease.take(uri, "test")  # the heartbeat keeps a live lease fresh
        # a lease whose holder stopped beating is taken over only after it expired
        held._stop.set()
        held._thread.join()
        with pytest.raises(OutputExistsError):
            protocol.Lease.take(uri, "test")
        time.sleep(EXPIRY + 0.5)
        other = protocol.Lease.take(uri, "test")
        with pytest.raises(OutputExistsError, match="was taken over by another run"):
            held.renew()  # the old holder learns it lost the output, and commits nothing
        held.release()
        assert storage.exists(f"{uri}/{protocol.LEASE}")  # its release does not free the new holder's lease
        other.release()
        assert not storage.exists(f"{uri}/{protocol.LEASE}")


# ---- 3-4. refused before any work: empty and root outputs, exclusive flags -----------------------------------------


def test_empty_and_root_outputs_are_refused_before_any_work(store, tmp_path, capsys, bucket):
    for output, pattern in [("", "output is empty"), ("  ", "output is empty"),
                            ("/", "output '/' is the root of a filesystem"),
                            (bucket, "is the root of a filesystem"), ("s3://", "is the root of a filesystem")]:
        with pytest.raises(ParameterError, match=pattern):
            activeft.select(store, 5, method="random", output=output)
        code, err = cli(capsys, "select", store.uri, "--budget", "5", "-o", output)
        assert code == 1
        assert re.search(pattern, err)
    with pytest.raises(ParameterError, match="state is empty"):
        activeft.loop(store, state="", round_budget=5, rounds=1, oracle="store-labels", final="none")
    code, err = cli(capsys, "import-embeddings", str(tmp_path / "x.npy"), "-o", "")
    assert code == 1
    assert "output is empty" in err
    # the pipeline probe: `--set output=` would have embedded into /store
    config = tmp_path / "c.yaml"
    config.write_text(f"output: {tmp_path}/out\nembed: {{source: {tmp_path}}}\nselect: {{budget: 5}}\n")
    for value, pattern in [("output=", "config key 'output' is empty"),
                           ("output=/", "config key 'output' '/' is the root"),
                           ("select.output=", "config key 'select.output' is empty")]:
        code, err = cli(capsys, "run", "curate", "--config", str(config), "--set", value)
        assert code == 1
        assert re.search(pattern, err)
    assert not os.path.exists("/store/_work") and not os.path.exists(tmp_path / "out")
    with pytest.raises(ParameterError, match="empty path"):
        storage.absolute("")


def test_resume_and_overwrite_together_are_refused(store, tmp_path, capsys):
    out = str(tmp_path / "sel")
    code, err = cli(capsys, "select", store.uri, "--budget", "5", "-o", out, "--resume", "--overwrite")
    assert code == 1
    assert "the 'resume' and 'overwrite' parameters exclude each other" in err
    assert not os.path.exists(out)


# ---- 5. Ray: a local instance unless an address names a cluster --------------------------------------------------


@pytest.mark.slow
@pytest.mark.ray
def test_ray_never_joins_a_foreign_head_on_this_host(tmp_path):
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_TMPDIR": temp, "TMPDIR": temp, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    head = spawn([ray_bin, "start", "--head", "--block", "--num-cpus", "1", "--port", str(port), "--include-dashboard",
                  "false", "--disable-usage-stats"], tmp_path / "head.log", RAY_TMPDIR=temp, TMPDIR=temp)
    try:
        wait_for(lambda: os.path.exists(os.path.join(temp, "ray", "ray_current_cluster")), head, 120,
                 "the foreign head")
        foreign = open(os.path.join(temp, "ray", "ray_current_cluster")).read().strip()
        code = f"""
import os, ray
from ray._private.services import canonicalize_bootstrap_address
from activeft.runtime import cluster
from activeft.runtime.console import setup_logging
setup_logging()
print("plain ray.init() would join:", canonicalize_bootstrap_address(None))
cluster.init()
print("ours:", ray.get_runtime_context().gcs_address, flush=True)
ray.shutdown()
# (Ray sends its token only to a cluster found on this host, or when asked: RAY_AUTH_MODE=token)
os.environ.update(RAY_ADDRESS={foreign!r}, RAY_AUTH_MODE="token")
cluster.init()
print("then:", ray.get_runtime_context().gcs_address)
"""
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"plain ray.init() would join: {foreign}" in proc.stdout  # the hazard is real here
        ours = re.search(r"ours: (\S+)", proc.stdout)[1]
        assert ours != foreign
        assert re.search(rf"Ray: started a local instance at {re.escape(ours)} with \d+ CPUs", proc.stderr)
        assert f"then: {foreign}" in proc.stdout  # RAY_ADDRESS: joined
        assert f"Ray: joined the cluster '{foreign}' at {foreign} with 1 CPUs" in proc.stderr
    finally:
        head.send_signal(signal.SIGTERM)  # --block: stopping it stops the processes it started, only those
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


# ---- 6. NaN and null labels ----------------------------------------------------------------------------------------


def test_nan_labels_are_one_line_naming_table_column_and_id(store, tmp_path, capsys):
    sel = activeft.select(store, 12, method="random", output=str(tmp_path / "sel"))
    labels = tmp_path / "labels.csv"
    rows = [f"{i},{j % 3}" for j, i in enumerate(sel.ids)]
    rows[4] = f"{sel.ids[4]},nan"  # what pandas writes for a missing float label
    labels.write_text("id,label\n" + "\n".join(rows) + "\n")
    pattern = rf"labels table {re.escape(str(labels))}: column 'label' has 1 empty or NaN values \(first: id " \
              rf"'{sel.ids[4]}'\)"
    code, err = cli(capsys, "calibrate", store.uri, "--selection", str(tmp_path / "sel"), "--labels", str(labels), "-o",
                 str(tmp_path / "cal"))
    assert code == 1
    assert re.search(pattern, err)
    code, err = cli(capsys, "finetune", store.uri, "--train", str(labels), "-o", str(tmp_path / "run"))
    assert code == 1
    assert re.search(pattern.replace("labels table", "train table"), err)
    blank = tmp_path / "blank.csv"
    blank.write_text("id,label\n" + "\n".join(rows[:4] + [f"{sel.ids[4]},"] + rows[5:]) + "\n")
    code, err = cli(capsys, "finetune", store.uri, "--train", str(blank), "-o", str(tmp_path / "run"))
    assert code == 1
    assert f"column 'label' has 1 empty or NaN values (first: id '{sel.ids[4]}')" in err
    with pytest.raises(LabelsError, match="column 'label' has 1 empty or NaN"):  # an Arrow table with a float NaN
        activeft.finetune(store, train=pa.table({"id": sel.ids[:4], "label": [0.0, 1.0, float("nan"), 1.0]}),
                          output=str(tmp_path / "run"))
    # the loop with a human labels table: the first round's selection comes back with a NaN label
    state = str(tmp_path / "loop")
    activeft.loop(store, state=state, round_budget=6, rounds=2, labels=str(tmp_path / "l.csv"), first="random",
                  final="none")
    picked = json.loads((tmp_path / "loop" / "state.json").read_text())["rounds"][0]["selected"]
    (tmp_path / "l.csv").write_text("id,label\n" + "".join(f"{i},{'nan' if k == 2 else k % 2}\n"
                                                           for k, i in enumerate(picked)))
    code, err = cli(capsys, "loop", store.uri, "--state", state, "--round-budget", "6", "--rounds", "2", "--labels",
                 str(tmp_path / "l.csv"), "--first", "random", "--final", "none")
    assert code == 1
    assert f"column 'label' has 1 empty or NaN values (first: id '{picked[2]}')" in err
    for out in ("cal", "run"):
        assert not (tmp_path / out).exists()


# ---- 8. tracebacks become one line, and nothing is left behind -----------------------------------------------------


def test_bad_inputs_are_one_line_and_leave_nothing(store, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"output: {tmp_path}/out\nembed: {{source: {tmp_path}}}\nselect: {{budget: 5}}\n")
    code, err = cli(capsys, "run", "curate", "--config", str(config), "--set", "select.budget=[1")
    assert code == 1
    assert re.search(r"--set 'select.budget=\[1': the value is not valid YAML", err)
    (tmp_path / "table.parquet").write_text("id,embedding\na,1\n")  # a CSV named .parquet
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new", tmp_path / "empty"):
        code, err = cli(capsys, "import-embeddings", str(tmp_path / "table.parquet"), "-o", str(out))
        assert code == 1
        assert re.search(r"cannot read .*table.parquet as Parquet \(.*\); import-embeddings reads a .parquet",
                         err)
    assert not (tmp_path / "new").exists() and os.listdir(tmp_path / "empty") == []
    (tmp_path / "x.npy").write_text("not numpy")
    (tmp_path / "ids.txt").write_text("a\n")
    code, err = cli(capsys, "import-embeddings", str(tmp_path / "x.npy"), "--ids", str(tmp_path / "ids.txt"), "-o",
                 str(tmp_path / "new"))
    assert code == 1
    assert "cannot read" in err and not (tmp_path / "new").exists()
    # a file given as a store is not "incomplete"
    code, err = cli(capsys, "select", str(tmp_path / "table.parquet"), "--budget", "5", "-o", str(tmp_path / "s"))
    assert code == 1
    assert "is a file, not a store directory" in err


@pytest.mark.slow
def test_object_store_outage_mid_run_is_one_line_naming_the_uri(store, tmp_path):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)
        fs.mkdir("outage")
        fs.put(store.uri + "/", "outage/pool/", recursive=True)
        proc = spawn([*CLI, "select", "s3://outage/pool", "--budget", "10", "-o", "s3://outage/sel", *SLOW],
                     tmp_path / "err.log", AWS_ENDPOINT_URL=endpoint,
                     **{protocol.EXPIRY_ENV: "60"})  # (no lease warning)
        try:
            wait_for(lambda: fs.exists("outage/sel/_work/select/state.pt"), proc, what="a checkpoint on S3")
        except BaseException:
            kill(proc)
            raise
    finally:
        server.stop()  # the endpoint goes away mid-run
    proc.wait(timeout=120)
    err = (tmp_path / "err.log").read_text().strip()
    assert proc.returncode == 1, err
    assert "\n" not in err and "Traceback" not in err, err
    assert re.fullmatch(rf"activeft: error: cannot reach the object store for s3://outage/sel/\S+ at "
                        rf"{re.escape(endpoint)} \(after retries\): AWS Error NETWORK_CONNECTION .*", err), err


def test_object_store_failures_wrapped_by_libraries_become_one_line():
    class ControllerError(Exception):  # how Ray Train reports its own checkpoint write failing
        pass

    wrapped = ControllerError("Training failed due to controller error:\nWhen initiating multiple part upload for key "
                              "'sel/x' in bucket 'b': AWS Error NETWORK_CONNECTION during CreateMultipartUpload "
                              "operation: curlCode: 7, Could not connect to server")
    err = storage.unavailable("s3://b/sel/_work", wrapped)
    assert isinstance(err, storage.StorageUnavailable) and "\n" not in str(err)
    assert str(err).startswith("cannot reach the object store for s3://b/sel/_work at ")
    assert str(err).endswith("(after retries): AWS Error NETWORK_CONNECTION during CreateMultipartUpload "
                             "operation: curlCode: 7, Could not connect to server")
    assert storage.unavailable("/local/dir", wrapped) is None and storage.unavailable("s3://b/x", ValueError()) is None
    err.args = (err.args[0] + "\nFailed to apply UDF transform after 1/1 attempts",)  # Ray Data's addition
    assert "\n" not in str(err)


# ---- 10. smaller ones ------------------------------------------------------------------------------------------------


def test_file_uris_in_a_manifest_stay_where_they_point(tmp_path):
    ids = write_images(tmp_path / "imgs", 3)
    manifest = tmp_path / "lists" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text("id,uri\n" + "".join(f"{i},file://{tmp_path / 'imgs' / i}\n" for i in ids[:2])
                        + f"{ids[2]},../imgs/{ids[2]}\n")
    table = sources.read_source(str(manifest))
    assert table.column("uri").to_pylist() == [str(tmp_path / "imgs" / i) for i in ids]
    for uri, i in zip(table.column("uri").to_pylist(), ids, strict=True):
        assert storage.read_bytes(uri) == (tmp_path / "imgs" / i).read_bytes()


def test_import_overwrite_with_bad_input_keeps_the_store_and_leaves_no_staging(tmp_path):
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "ids.txt").write_text("\n".join(f"k{i}" for i in range(6)))
    activeft.import_embeddings(str(tmp_path / "x.npy"), str(tmp_path / "s"), ids=str(tmp_path / "ids.txt"))
    before = snapshot(str(tmp_path / "s"))
    x[5, 0] = np.inf
    np.save(tmp_path / "bad.npy", x)
    with pytest.raises(SourceError, match="1 embeddings contain NaN or inf \\(first: id 'k5'\\)"):
        activeft.import_embeddings(str(tmp_path / "bad.npy"), str(tmp_path / "s"), ids=str(tmp_path / "ids.txt"),
                                   overwrite=True, partition_size=2)  # three shards were staged before the bad row
    assert snapshot(str(tmp_path / "s")) == before
