"""Finetuning: the linear probe on embeddings, full finetuning on images with Ray Train, resume, bad input."""

import logging
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import activeft
from activeft.errors import LabelsError, ModelError, StoreError

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    d = tmp_path_factory.mktemp("feat")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 4
    y = np.repeat(np.arange(4), 30)
    x = (centres[y] + rng.normal(size=(120, 16))).astype(np.float32)
    ids = [f"f{i:03d}" for i in range(120)]
    pq.write_table(pa.table({"id": ids, "embedding": list(x), "label": y}), d / "emb.parquet")
    store = activeft.import_embeddings(str(d / "emb.parquet"), str(d / "store"))
    names = np.array(["cat", "dog", "eel", "fox"])
    table = pa.table({"id": ids, "label": names[y]})
    order = rng.permutation(120)
    return d, store, table.take(order[:40]), table.take(order[40:])


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_linear_mode_separable_features(features, tmp_path, head):
    d, store, train, val = features
    info = activeft.finetune(store, train=train, val=val, output=str(tmp_path / "run"), head=head)
    assert info["final_val_accuracy"] >= 0.99 and info["classes"] == ["cat", "dog", "eel", "fox"]
    assert info["history"][-1]["train_accuracy"] == 1.0
    assert (tmp_path / "run" / "classes.json").exists() and (tmp_path / "run" / "model.safetensors").exists()
    model, classes = activeft.load_model(str(tmp_path / "run"))
    x = torch.from_numpy(store.embeddings())
    rows = store.rows_of(val.column("id").to_pylist())
    pred = np.array(classes)[model(x[rows]).argmax(1).numpy()]
    assert (pred == np.array(val.column("label").to_pylist())).mean() == info["final_val_accuracy"]


def test_linear_is_sklearn_logistic_regression(features):
    sklearn = pytest.importorskip("sklearn.linear_model")
    from activeft.models.heads import train_linear

    d, store, train, val = features
    x = torch.from_numpy(store.embeddings()[:60])
    y = torch.from_numpy(np.repeat(np.arange(4), 15)[np.random.default_rng(1).permutation(60)])
    ours = train_linear(x, y, 4, max_iter=1000)
    ref = sklearn.LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(x.numpy(), y.numpy())
    ours_p = torch.softmax(ours(x), 1).detach().numpy()
    np.testing.assert_allclose(ours_p, ref.predict_proba(x.numpy()), atol=2e-3)


def test_bad_inputs(features, tmp_path, caplog, capsys):
    from activeft.cli import main

    d, store, train, val = features
    out = str(tmp_path / "run")
    cases = [
        (pa.table({"id": ["f001", "nope", "gone"], "label": ["a", "b", "a"]}), {},
         StoreError, "2 train ids are not in the store .* \\(e.g. 'nope', 'gone'\\)"),
        (pa.table({"id": ["f001", "f002"], "label": ["a", "a"]}), {}, LabelsError, "single class \\('a'\\)"),
        (pa.table({"id": pa.array([], pa.string()), "label": pa.array([], pa.string())}), {}, LabelsError,
         "train table is empty"),
        (train, {"mode": "full"}, ModelError, "has no backbone \\(imported embeddings\\)"),
    ]
    for table, extra, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            activeft.finetune(store, train=table, output=out, **extra)
        assert not os.path.exists(out)
    odd = val.set_column(1, "label", pa.array(["cat"] * (val.num_rows - 3) + ["yak", "yak", "emu"]))
    with caplog.at_level(logging.WARNING, logger="activeft"):
        info = activeft.finetune(store, train=train, val=odd, output=out)
    assert "3 of 80 validation rows have classes never seen in training" in caplog.text
    assert info["final_val_accuracy"] <= 77 / 80
    pq.write_table(train, tmp_path / "train.parquet")
    assert main(["finetune", store.uri, "--train", str(tmp_path / "train.parquet"), "-o", out]) == 1
    assert re.search("is not empty; pass --resume", capsys.readouterr().err)
    assert main(["finetune", store.uri, "--train", str(tmp_path / "train.parquet"), "-o", str(tmp_path / "x"),
                 "--mode", "fancy"]) == 1
    assert "The 'mode' parameter of finetune must be one of linear, full, lp-ft" in capsys.readouterr().err


# ---- full finetuning on real images (Ray Train, 2 CPU workers) --------------------------------------------------


@pytest.fixture(scope="module")
def image_store(stripes_store):
    store, labels = stripes_store
    return store, labels.slice(0, 24), labels.slice(24)


FULL = {"mode": "full", "num_workers": 2, "batch_size": 4, "lr": 0.1, "eval_every": 1}


def test_lp_ft_on_two_workers_weighted_stopped_and_resumed_continues_at_the_right_epoch(image_store, tmp_path):
    import timm
    from safetensors.torch import load_file

    store, train, val = image_store
    weighted = train.append_column("confidence", pa.array([1.0, 0.6] * (train.num_rows // 2)))  # as labelprop's
    out = str(tmp_path / "run")
    lp_ft = {**FULL, "mode": "lp-ft", "lr": 1e-4}
    with pytest.raises(Exception, match="injected failure"):
        activeft.finetune(store, train=weighted, val=val, output=out, epochs=2, _fail_at=1, max_failures=0, **lp_ft)
    assert not os.path.exists(os.path.join(out, "metrics.json"))
    info = activeft.finetune(store, train=weighted, val=val, output=out, epochs=2, resume=True, max_failures=0,
                             **lp_ft)
    assert [h["epoch"] for h in info["history"]] == [0, 1] and info["config"]["weighted"]
    assert info["history"][1].get("resumed") and not info["history"][0].get("resumed")
    assert all("val_accuracy" in h for h in info["history"])
    model, classes = activeft.load_model(out)
    plain = timm.create_model("resnet18", num_classes=2)  # timm names: loads strictly into the plain model
    plain.load_state_dict(load_file(os.path.join(out, "model.safetensors")))
    assert classes == ["h", "v"] and model.head.weight.shape == (2, 512)
    probe = activeft.finetune(store, train=weighted, val=val, output=str(tmp_path / "probe"))
    probe_head = activeft.load_model(str(tmp_path / "probe"))[0].head.weight.detach()
    # LP-FT starts from the linear probe, and two epochs at a tiny learning rate move it only a little
    moved = float((model.head.weight.detach() - probe_head).abs().max())
    assert 0 < moved < 0.01 * float(probe_head.abs().max())
    assert abs(info["final_val_accuracy"] - probe["final_val_accuracy"]) <= 0.25
