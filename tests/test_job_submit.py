"""``ray job submit`` as a user runs it, against a real Ray head: ``ray start --head`` on this host (its
own temporary directory and ports, the dashboard, token authentication set up as the README says), the
curate pipeline submitted from the user's directory, its outputs where that user looks, and the head's
Prometheus metrics equal to what the store recorded."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from types import SimpleNamespace

import pytest
import yaml

import activeft
from activeft.config import load_config
from activeft.demo import write_digits
from activeft.errors import ConfigError

pytestmark = pytest.mark.timeout(300)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)  # the venv's ray and python: what the user's shell finds


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _processes() -> dict[int, tuple[int, int]]:
    """``{pid: (parent pid, session id)}`` of every running process (Linux ``/proc``; zombies have exited)."""
    out = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as f:
                state, ppid, _, sid = f.read().rsplit(")", 1)[1].split()[:4]
        except OSError:  # exited meanwhile
            continue
        if state != "Z":
            out[int(name)] = (int(ppid), int(sid))
    return out


def _started_by(root: int) -> set[int]:
    """The processes of ``root``'s session and their descendants (a job's driver runs in a session of its own)."""
    procs = _processes()
    found = {pid for pid, (_, sid) in procs.items() if sid == root}
    while grown := {pid for pid, (ppid, _) in procs.items() if ppid in found} - found:
        found |= grown
    return found


def _stop(head: subprocess.Popen) -> None:
    """Stop only this head: SIGTERM to its ``ray start --block``, which stops what it started, then SIGKILL
    to whatever of it is left (its processes, by id)."""
    ours = _started_by(head.pid)
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait()
    deadline = time.monotonic() + 20
    while (left := ours & set(_processes())) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def head(tmp_path):
    """A Ray head as the README starts it, with token authentication: ``ray get-auth-token --generate`` (in
    a home of its own), then ``RAY_AUTH_MODE=token ray start --head``. Yields what a client needs."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HOME=str(tmp_path / "home"), RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0",
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # stopped at once, not drained for 30 s
               RAY_metrics_report_interval_ms="2000",  # metrics exported every 2 s, not 10: less polling
               PATH=BIN + os.pathsep + env.get("PATH", ""))
    subprocess.run([f"{BIN}/ray", "get-auth-token", "--generate"], env=env, check=True, capture_output=True,
                   timeout=60)
    token = (tmp_path / "home" / ".ray" / "auth_token").read_text().strip()
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths live under it
    dashboard, metrics, agent, agent_grpc, client, runtime_env = _free_ports(6)
    log = open(tmp_path / "head.log", "w")
    proc = subprocess.Popen(
        [f"{BIN}/ray", "start", "--head", "--block", "--port", "0", "--num-cpus", "2", "--temp-dir", temp,
         "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
         "--metrics-export-port", str(metrics), "--dashboard-agent-listen-port", str(agent),
         "--dashboard-agent-grpc-port", str(agent_grpc), "--ray-client-server-port", str(client),
         "--runtime-env-agent-port", str(runtime_env)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dashboard}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the head's job server did not come up"
            try:
                request = urllib.request.Request(f"{address}/api/version", headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(request, timeout=5):
                    break
            except OSError:
                time.sleep(1)
        yield SimpleNamespace(env=env, address=address, metrics=f"http://127.0.0.1:{metrics}/metrics", temp=temp)
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _submit(head, cwd, *args) -> subprocess.CompletedProcess:
    return subprocess.run([f"{BIN}/ray", "job", "submit", "--address", head.address, *args], cwd=cwd, env=head.env,
                          capture_output=True, text=True, timeout=180)


def _scrape(url: str) -> dict[str, float]:
    """``{metric: value summed over its series}`` of the embed stage's counters on the node's endpoint."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    out = {"activeft_images_embedded": 0.0, "activeft_decode_errors": 0.0}
    for name, labels, value in re.findall(r"^ray_(activeft_\w+)_total\{(.*)\} (\S+)$", text, re.M):
        if name in out and 'stage="embed"' in labels:
            out[name] += float(value)
    return out


@pytest.mark.slow
@pytest.mark.ray
def test_job_submit_writes_where_the_user_looks_and_metrics_match_the_store(head, tmp_path):
    user = tmp_path / "project"  # the directory the user submits from
    shutil.copytree(os.path.join(ROOT, "pipelines"), user / "pipelines")
    digits = user / "data" / "digits"
    n = write_digits(str(digits), size=16, limit=40)
    (digits / "bad").mkdir()
    with open(digits / "_manifest.csv", "a") as f:
        for i in range(2):  # images that cannot be decoded: recorded as errors
            (digits / "bad" / f"{i}.png").write_bytes(b"not an image")
            f.write(f"bad/{i}.png,bad/{i}.png,0\n")
    (user / "configs").mkdir()
    (user / "configs" / "c.yaml").write_text(yaml.safe_dump({
        "name": "t", "output": "out/demo",
        "embed": {"source": "data/digits/_manifest.csv", "model": "resnet18", "pretrained": "none", "image_size": 32,
                  "batch_size": 16, "partition_size": 20, "max_error_fraction": 0.1},
        "select": {"budget": 4}, "report": {"sample": 100, "clusters": 3}},
        sort_keys=False))
    entrypoint = ["--", "python", "pipelines/curate.py", "--config", "configs/c.yaml"]

    # a copy of the directory: the relative paths are refused in one line, nothing is written into the copy
    copied = _submit(head, user, "--working-dir", ".", *entrypoint)
    assert copied.returncode == 1
    assert "relative paths in the config (output='out/demo', embed.source='data/digits/_manifest.csv') would " \
           "resolve inside Ray's temporary copy" in copied.stdout, copied.stdout[-3000:] + copied.stderr[-3000:]
    copies = [os.path.join(r, d) for r, ds, _ in os.walk(head.temp) for d in ds if os.path.basename(r) ==
              "working_dir_files"]
    assert copies and not any(os.path.exists(os.path.join(c, "out")) for c in copies)

    # the directory itself: outputs land in the user's out/demo
    done = _submit(head, user, "--working-dir", f"local://{user}", *entrypoint)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    store = activeft.EmbeddingStore(str(user / "out" / "demo" / "store"))
    errors = store.manifest["errors"]
    assert len(store) == n and errors == 2
    assert len(activeft.read_selection(str(user / "out" / "demo" / "selection"))) == 4
    assert (user / "out" / "demo" / "selection" / "report.html").is_file()
    assert (user / "out" / "demo" / "export" / "labelstudio.json").is_file()

    # the node's Prometheus endpoint counts each image once (exported with a lag: polled)
    expected = {"activeft_images_embedded": float(len(store)), "activeft_decode_errors": float(errors)}
    deadline = time.monotonic() + 60
    while (seen := _scrape(head.metrics)) != expected and time.monotonic() < deadline:
        time.sleep(2)
    assert seen == expected


def test_relative_config_paths_are_refused_in_a_ray_working_dir_copy(tmp_path, monkeypatch):
    copy = tmp_path / "session_2026-01-01_00-00-00_000000_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0a"
    (copy / "configs").mkdir(parents=True)
    path = str(copy / "configs" / "c.yaml")
    (copy / "configs" / "c.yaml").write_text(yaml.safe_dump({
        "output": "out/{date}", "embed": {"source": "data/m.csv", "pretrained": "hub"}, "select": {"budget": 4},
        "train": {"labels": "{output}/labels.csv"}}, sort_keys=False))
    monkeypatch.chdir(copy / "configs")  # anywhere in the copy
    with pytest.raises(ConfigError) as e:
        load_config(path, date="2026-01-02")
    assert "\n" not in str(e.value) and str(e.value).startswith(
        "relative paths in the config (output='out/2026-01-02', embed.source='data/m.csv', "
        f"train.labels='out/2026-01-02/labels.csv') would resolve inside Ray's temporary copy of the job's working "
        f"directory ({copy}), which Ray deletes; ")
    # absolute paths and object-store URIs mean the same anywhere
    cfg = load_config(path, ["output=s3://bucket/out", f"embed.source={tmp_path}/m.csv", "train.labels=~/labels.csv"])
    assert cfg.select.output == "s3://bucket/out/selection"
    monkeypatch.chdir(tmp_path)  # not a copy: relative paths are under the current directory, as always
    assert load_config(path, date="2026-01-02").embed.store == "out/2026-01-02/store"
