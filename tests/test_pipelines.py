"""Pipelines: configs, the curate pipeline end to end, stage resume, scheduled runs, manifests, report, export."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from images import write_images

import activeft
from activeft.config import load_config
from activeft.demo import write_digits

pytestmark = pytest.mark.timeout(300)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_config(path, tree) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(tree, f)
    return str(path)


def small(tmp_path, source, **select):
    return {"name": "t", "output": str(tmp_path / "out"),
            "embed": {"source": source, "model": "resnet18", "pretrained": "none", "image_size": 32,
                      "partition_size": 50},
            "select": {"method": "activeft", "budget": 6, "params": {"iterations": 30}, **select},
            "report": {"sample": 500, "clusters": 4}}


def test_config_errors_are_one_line(tmp_path, capsys):
    from activeft.cli import main

    good = small(tmp_path, "x")
    cases = [
        ({**good, "selekt": {}}, [], "config key 'selekt' is not allowed here; allowed keys: name, output, embed"),
        ({**good, "select": {**good["select"], "method": "kmean"}}, [],
         "config key 'select.method': must be one of activeft, bilaf, fds, herding, kmeans, probcover, random, "
         "typiclust \\(got 'kmean'\\)"),
        (good, ["embed.batch_size=many"], "config key 'embed.batch_size': input should be a valid integer"),
        (good, ["select.params.temperature=-1"], "config key 'select.params': The 'temperature' parameter of "
                                                 "activeft must be a float > 0"),
        (good, ["select.budget"], "--set 'select.budget': expected key=value"),
        (good, ["select.budget=lots"], "config key 'select.budget': must be a count >= 1 or a fraction of the pool"),
        ({"output": "o"}, [], "config has no 'embed' section"),
    ]
    for tree, sets, pattern in cases:
        path = write_config(tmp_path / "c.yaml", tree)
        assert main(["run", "curate", "--config", path, *sum((["--set", s] for s in sets), [])]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and re.search(pattern, err), (pattern, err)
    assert main(["run", "curat", "--config", path]) == 1
    assert "unknown pipeline 'curat'; available: active_loop, curate, train (did you mean 'curate'?)" in \
        capsys.readouterr().err
    assert main(["run", "curate", "--config", str(tmp_path / "none.yaml")]) == 1
    assert "does not exist or is empty" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.usefixtures("ray_session")
def test_curate_end_to_end_resumes_at_the_first_unfinished_stage(tmp_path, caplog, capsys):
    from activeft.pipeline import main
    from activeft.pipelines import curate

    write_digits(str(tmp_path / "digits"), size=32, limit=150)
    cfg = write_config(tmp_path / "c.yaml", {**small(tmp_path, str(tmp_path / "digits" / "_manifest.csv")),
                                             "scores": {"k": 5}})
    # the run dies in select (a budget larger than the pool) after embed and scores finished
    assert main(curate.run, ["--config", cfg, "--set", "select.budget=5000"]) == 1
    state = json.loads((tmp_path / "out" / "_pipeline.json").read_text())
    assert list(state["stages"]) == ["embed", "scores"]
    assert pq.read_table(tmp_path / "out" / "scores" / "scores.parquet").num_rows == 150
    manifest = tmp_path / "out" / "store" / "_manifest.json"
    stamp = manifest.stat().st_mtime_ns
    caplog.clear()
    assert main(curate.run, ["--config", cfg]) == 0  # the retry skips embed
    assert "stage embed: already done in this run" in caplog.text and manifest.stat().st_mtime_ns == stamp
    state = json.loads((tmp_path / "out" / "_pipeline.json").read_text())
    assert list(state["stages"]) == ["embed", "scores", "select", "report", "export"]
    sel = activeft.read_selection(str(tmp_path / "out" / "selection"))
    assert len(sel) == 6 and sel.table.column_names[:4] == ["id", "uri", "rank", "method"]
    page = (tmp_path / "out" / "selection" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # loss, coverage, clusters, class balance
    assert "<svg" in page and page.count("<circle class='sel'") == 6  # the projection, hoverable
    assert page.count("data:image/jpeg;base64,") >= 6  # thumbnails: the selected images, cluster examples
    tasks = json.loads((tmp_path / "out" / "export" / "labelstudio.json").read_text())
    assert [t["data"]["id"] for t in tasks] == sel.ids
    assert all(set(t) == {"data"} and os.path.isfile(t["data"]["image"]) for t in tasks)
    caplog.clear()
    assert main(curate.run, ["--config", cfg]) == 0  # finished: every stage is skipped
    assert caplog.text.count("already done in this run") == 5
    assert main(curate.run, ["--config", cfg, "--set", "select.budget=0.05"]) == 1  # not a stale selection
    assert "stage select of " in capsys.readouterr().err and sel.ids == activeft.read_selection(
        str(tmp_path / "out" / "selection")).ids


@pytest.mark.usefixtures("ray_session")
def test_scheduled_run_embeds_new_images_and_excludes_labeled(tmp_path):
    from activeft.pipelines import curate

    src = tmp_path / "incoming"
    write_images(src, 60)
    tree = small(tmp_path, str(src), exclude=str(tmp_path / "labeled.parquet"))
    tree["output"] = str(tmp_path / "nightly" / "{date}")
    tree["embed"]["store"] = str(tmp_path / "store")
    tree["report"]["enabled"] = False
    pq.write_table(pa.table({"id": pa.array([], pa.string())}), tmp_path / "labeled.parquet")
    path = write_config(tmp_path / "c.yaml", tree)
    curate.run(load_config(path, date="2026-01-01"))
    first = activeft.read_selection(str(tmp_path / "nightly" / "2026-01-01" / "selection"))
    # labels came back for the first selection, and 20 new images arrived
    pq.write_table(pa.table({"id": first.ids}), tmp_path / "labeled.parquet")
    write_images(src, 20, start=500)
    before = activeft.EmbeddingStore(str(tmp_path / "store"))
    curate.run(load_config(path, date="2026-01-02"))
    store = activeft.EmbeddingStore(str(tmp_path / "store"))  # the new images only, in new shards after the old
    assert len(store) == 80 and store.manifest["last_run"]["embedded"] == 20 and store.ids()[:60] == before.ids()
    assert store.manifest["shards"][:len(before.manifest["shards"])] == before.manifest["shards"]
    second = activeft.read_selection(str(tmp_path / "nightly" / "2026-01-02" / "selection"))
    assert not set(second.ids) & set(first.ids) and second.info["excluded"] == 6
    assert (tmp_path / "nightly" / "2026-01-01" / "_pipeline.json").exists()


def test_cluster_manifests_reference_existing_pipelines_and_configs():
    entrypoints = []
    for name in sorted(os.listdir(os.path.join(ROOT, "cluster"))):
        path = os.path.join(ROOT, "cluster", name)
        if name.endswith(".json"):  # the Grafana dashboard: test_grafana_dashboard_shows_every_metric
            continue
        if name == "Dockerfile":
            text = open(path).read()
            for src in re.findall(r"^COPY (?:--\S+ )*(\S+)", text, re.M):
                assert os.path.exists(os.path.join(ROOT, src)), src
            continue
        doc = yaml.safe_load(open(path))
        kind = doc.get("kind", "cluster-launcher")
        spec = doc.get("spec", {})
        if kind == "RayJob":
            entrypoints.append(spec["entrypoint"])
            assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1
            groups = spec["rayClusterSpec"]["workerGroupSpecs"]
            assert any("nvidia.com/gpu" in str(g) for g in groups) and len(groups) >= 2
            assert "env_vars" in yaml.safe_load(spec["runtimeEnvYAML"])
        elif kind == "RayCronJob":
            entrypoints.append(spec["jobTemplate"]["entrypoint"])
            assert len(spec["schedule"].split()) == 5
        elif kind == "RayCluster":
            assert spec["headGroupSpec"] and spec["workerGroupSpecs"]
        elif kind == "ServiceAccount":  # its fields: tests/test_manifests.py
            continue
        else:
            assert doc["provider"]["type"] and doc["head_node_type"] in doc["available_node_types"]
            entrypoints += re.findall(r"ray submit \S+ (pipelines/\S+\.py) --config (configs/\S+\.yaml)",
                                      open(path).read())
    assert len(entrypoints) >= 3
    for entry in entrypoints:
        script, config = entry if isinstance(entry, tuple) else \
            re.fullmatch(r"python (pipelines/\w+\.py) --config (configs/\S+\.yaml)", entry).groups()
        assert os.path.isfile(os.path.join(ROOT, script)) and os.path.isfile(os.path.join(ROOT, config))
        load_config(os.path.join(ROOT, config))  # validates


def test_every_config_validates():
    for name in os.listdir(os.path.join(ROOT, "configs")):
        cfg = load_config(os.path.join(ROOT, "configs", name), date="2026-01-01")
        assert cfg.embed and (cfg.select or cfg.loop), name


def tiny_selection(tmp_path, with_uris=True, prefix="s3://pool"):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    ids = [f"img{i:03d}.png" for i in range(300)]
    table = {"id": ids, "embedding": list(x), "label": rng.integers(0, 3, 300)}
    if with_uris:
        table["uri"] = [f"{prefix}/{i}" for i in ids]
    pq.write_table(pa.table(table), tmp_path / "emb.parquet")
    store = activeft.import_embeddings(str(tmp_path / "emb.parquet"), str(tmp_path / "store"))
    return store, activeft.select(store, 10, method="kmeans", iterations=5, output=str(tmp_path / "sel"))


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    from activeft.report import write_report

    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (tests/install_debian_packages.sh installs it)")
    store, sel = tiny_selection(tmp_path)
    uri = write_report(store, sel, clusters=4)
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1000,2600",
                    f"file://{uri}"], check=True, timeout=120, capture_output=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    plot_rows = (pixels.std(axis=1) > 10).sum()  # rows with content, not a blank page
    assert pixels.shape == (2600, 1000) and plot_rows > 1500


@pytest.mark.slow
def test_report_shows_the_selected_images_in_headless_chromium(tmp_path):
    from PIL import Image

    from activeft.report import write_report

    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (tests/install_debian_packages.sh installs it)")
    ids = write_images(tmp_path / "imgs", 120, size=48)
    x = np.random.default_rng(1).normal(size=(120, 8)).astype(np.float32)
    uris = [str(tmp_path / "imgs" / i) for i in ids]
    pq.write_table(pa.table({"id": ids, "uri": uris, "embedding": list(x)}), tmp_path / "emb.parquet")
    store = activeft.import_embeddings(str(tmp_path / "emb.parquet"), str(tmp_path / "store"))
    sel = activeft.select(store, 12, method="kmeans", iterations=5, output=str(tmp_path / "sel"))
    page = open(write_report(store, sel, clusters=3)).read()
    srcs = re.findall(r"<img[^>]* src='([^']*)'", page)
    assert srcs and all(s.startswith("data:image/") for s in srcs)  # self-contained: no link can break
    gallery = page.split("<h2>Selected images</h2>")[1].split("<h2>")[0]
    assert [f"{k}. {i}" for k, i in enumerate(sel.ids)] == re.findall(r"<figcaption>([^<]*)</figcaption>", gallery)
    assert "no image" not in page and page.count("<h3>Cluster ") == 3
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1000,900",
                    f"file://{tmp_path / 'sel' / 'report.html'}"], check=True, timeout=120, capture_output=True)
    top = np.asarray(Image.open(shot).convert("RGB"), dtype=float)[250:450]  # the gallery's first rows
    saturated = (top.max(axis=2) - top.min(axis=2)) > 60  # the test images are colourful; the page is grey
    assert saturated.mean() > 0.05, "the thumbnails did not render"


def test_label_studio_export_presigns_s3_urls(tmp_path, bucket):
    import urllib.request

    import s3fs

    from activeft.export import export

    store, sel = tiny_selection(tmp_path, prefix=bucket)
    s3fs.S3FileSystem().pipe(sel.table.column("uri")[0].as_py(), b"first image bytes")
    info = export(sel, str(tmp_path / "exp"), presign=True, expires=3600)
    tasks = json.loads((tmp_path / "exp" / "labelstudio.json").read_text())
    assert len(tasks) == 10 and info["presigned"] and info["expires_at"]
    assert [t["data"]["id"] for t in tasks] == sel.ids and [t["data"]["rank"] for t in tasks] == list(range(10))
    url = tasks[0]["data"]["image"]
    assert url.startswith(os.environ["AWS_ENDPOINT_URL"]) and "Signature=" in url
    with urllib.request.urlopen(url, timeout=10) as response:  # the presigned URL fetches the object
        assert response.read() == b"first image bytes"
    plain = export(sel, str(tmp_path / "exp-plain"))
    assert json.loads((tmp_path / "exp-plain" / "labelstudio.json").read_text())[0]["data"]["image"].startswith("s3://")
    assert not plain["presigned"]
    rows = (tmp_path / "exp" / "selection.csv").read_text().splitlines()
    assert rows[0] == '"id","uri","rank"' and len(rows) == 11
    os.makedirs(tmp_path / "n")
    _, no_uris = tiny_selection(tmp_path / "n", with_uris=False)
    ids_only = export(no_uris, str(tmp_path / "exp2"))  # imported embeddings: ids for the annotators, no tasks
    assert list(ids_only["files"]) == ["csv"] and not (tmp_path / "exp2" / "labelstudio.json").exists()
    assert (tmp_path / "exp2" / "selection.csv").read_text().splitlines()[0] == '"id","rank"'


@pytest.mark.usefixtures("ray_session")
def test_metrics_are_registered_and_documented():
    from ray.util import metrics as ray_metrics

    from activeft.runtime import metrics

    readme = open(os.path.join(ROOT, "README.md")).read()
    for name, (kind, _) in metrics.METRICS.items():
        assert name.startswith("activeft_") and f"`{name}`" in readme, name
        made = metrics._get(name)
        assert isinstance(made, ray_metrics.Counter if kind == "counter" else ray_metrics.Gauge)
        (metrics.inc if kind == "counter" else metrics.set)(name, 1.0, stage="test")


def test_grafana_dashboard_shows_every_metric():
    from activeft.runtime import metrics

    dash = json.loads(open(os.path.join(ROOT, "cluster", "grafana-activeft.json")).read())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for name, (kind, _) in metrics.METRICS.items():  # Ray exports ray_<name>, counters with _total
        assert f"ray_{name}{'_total' if kind == 'counter' else ''}{{" in exprs, name
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "SessionName"}
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"])
