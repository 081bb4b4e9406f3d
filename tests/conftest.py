"""Shared fixtures: one local Ray per test session, a real S3 protocol server (moto) on
127.0.0.1, and real image files written by the tests."""

import os

# Ray listens on loopback only, without usage reporting; S3 goes to the moto server below;
# Ray workers inherit this environment, so tests/ (jobs.py) is importable on them.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.dirname(__file__), os.environ.get("PYTHONPATH")) if p)
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                  AWS_EC2_METADATA_DISABLED="true")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pytest  # noqa: E402
from images import stripes, write_images  # noqa: E402,F401  (write_images: re-exported for tests)
from PIL import Image  # noqa: E402


@pytest.hookimpl(tryfirst=True)  # before -m deselects by mark
def pytest_collection_modifyitems(items):
    """Mark ``ray`` every test that uses the ``ray_session`` fixture, directly or through another fixture
    (tests that start Ray another way carry the mark themselves)."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1; AWS_ENDPOINT_URL points every client (and Ray worker) at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    yield os.environ["AWS_ENDPOINT_URL"]
    server.stop()


@pytest.fixture(scope="session")
def ray_session(s3_endpoint):
    """One local Ray for the whole run (2 CPUs, as CI); started after moto so workers see its endpoint."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def stripes_store(tmp_path_factory, ray_session):
    """32 images of horizontal or vertical stripes, labeled ``h`` or ``v`` in their manifest, embedded once
    (resnet18, random weights, 32 px) for the tests that finetune or refresh a backbone: ``(store, labels)``,
    the labels table in image order. Tests read it and write elsewhere."""
    import activeft

    d = tmp_path_factory.mktemp("stripes")
    ids = [f"{'v' if i % 2 else 'h'}{i:02d}.png" for i in range(32)]
    labels = pa.table({"id": ids, "label": [i[0] for i in ids]})
    for i, key in enumerate(ids):
        Image.fromarray(stripes(i, bool(i % 2))).save(d / key)
    (d / "_manifest.csv").write_text("id,uri,label\n" + "".join(f"{i},{d / i},{i[0]}\n" for i in ids))
    store = activeft.embed(str(d / "_manifest.csv"), str(d / "_store"), model="resnet18", pretrained="none",
                           image_size=32, batch_size=8)
    return store, labels


@pytest.fixture
def bucket(s3_endpoint, request):
    """A fresh bucket per test: ``s3://<name>``."""
    import s3fs

    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-") + f"-{np.random.randint(1e6)}"
    fs = s3fs.S3FileSystem()
    fs.mkdir(name)
    return f"s3://{name}"
