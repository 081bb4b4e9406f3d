"""The embed stage on real image files, local and through a real S3 protocol server."""

import json
import os
import re
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
import torch
from images import direct_embeddings, write_broken, write_images

import activeft
from activeft.embed import pipeline, sources
from activeft.errors import ModelError, OutputExistsError, SourceError, StoreError
from activeft.models.backbone import BackboneSpec

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(240)]
TINY = dict(model="resnet18", pretrained="none", image_size=32, batch_size=8)


def test_local_folder_with_broken_files_from_the_cli_stopped_and_resumed(tmp_path, capsys):
    from activeft.cli import main

    src = tmp_path / "imgs"
    ids = write_images(src, 20)
    broken = write_broken(src)
    (src / "readme.txt").write_text("not listed: not an image extension")
    argv = ["embed", str(src), "-o", str(tmp_path / "store"), "--model", "resnet18", "--pretrained", "none",
            "--image-size", "32", "--batch-size", "8", "--partition-size", "8", "--dtype", "float16"]
    # 3 of 23 cannot be decoded: over a 10% budget the run fails in one line, without a manifest, keeping its work
    assert main([*argv, "--max-error-fraction", "0.1"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("activeft: error:")]
    assert len(errors) == 1 and re.search(r"3 of 23 images could not be decoded \(13.0% > max_error", errors[0])
    out = tmp_path / "store"
    assert not (out / "_manifest.json").exists() and (out / "part-00002.parquet").exists()
    # and as if it had been killed too: one shard never finished, another half staged
    os.remove(out / "part-00001.parquet")
    os.remove(out / "part-00002.parquet")
    staging = out / "_work" / "staging" / "part-00002"
    staging.mkdir(parents=True)
    plan = pq.read_table(out / "_work" / "plan" / "part-00002.parquet")
    pq.write_table(plan.slice(0, 1), staging / "000000000-000000000.parquet")
    with pytest.raises(StoreError, match="incomplete"):
        activeft.EmbeddingStore(str(out))
    assert main([*argv, "--max-error-fraction", "0.2"]) == 1
    assert "is not empty; pass --resume" in capsys.readouterr().err
    assert main([*argv, "--max-error-fraction", "0.2", "--resume", "--image-size", "48"]) == 1
    assert re.search("was embedded with a different config .*resnet18", capsys.readouterr().err)
    # --resume with a larger error budget redoes partitions 1 (8 images) and 2 (7) only
    assert main([*argv, "--max-error-fraction", "0.2", "--resume"]) == 0
    assert "20 rows, dim 512, 3 errors; embedded 15 images in" in capsys.readouterr().out
    assert not os.listdir(out / "_work" / "staging")
    store = activeft.EmbeddingStore(str(out))

    assert sorted(store.ids()) == sorted(ids)
    assert store.manifest["rows"] == 20 and store.manifest["errors"] == 3
    assert [s["name"] for s in store.manifest["shards"]] == ["part-00000.parquet", "part-00001.parquet",
                                                           "part-00002.parquet"]
    errors = pq.read_table(tmp_path / "store" / "_errors.parquet").to_pylist()
    assert [e["id"] for e in errors] == broken
    assert all(e["error"] and "0x" not in e["error"] for e in errors)
    schema = pq.read_schema(tmp_path / "store" / "part-00000.parquet")
    assert schema.field("embedding").type == pa.list_(pa.float16(), 512)
    assert schema.field("id").type == pa.string()
    b = store.manifest["backbone"]
    assert (b["model"], b["weights"]["pretrained"], store.manifest["preprocessing"]["input_size"]) == \
        ("resnet18", "none", [3, 32, 32])

    x = store.embeddings()
    assert x.dtype == np.float32  # read back as float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=2e-3)
    reference = direct_embeddings(src, store.ids())
    assert np.abs(x - reference).max() < 2e-3  # (float16: half an ulp near 0.1 is 3e-5, near 1 5e-4)


def test_vit_cls_embeddings_equal_direct_forward(tmp_path):
    src = tmp_path / "imgs"
    ids = write_images(src, 6)
    spec = BackboneSpec("vit_tiny_patch16_224", "none", 32)
    store = activeft.embed(str(src), str(tmp_path / "store"), model=spec.model, pretrained="none", image_size=32,
                           batch_size=4)
    assert store.dim == 192
    assert np.abs(store.embeddings() - direct_embeddings(src, store.ids(), spec)).max() < 1e-4
    assert sorted(store.ids()) == sorted(ids)


def test_weights_file_pth_and_a_wrong_model(tmp_path):
    import timm

    torch.manual_seed(123)
    trained = timm.create_model("resnet18", num_classes=10)  # head included, as a finetuned checkpoint has
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "w.pth")
    model, record = BackboneSpec("resnet18", str(tmp_path / "w.pth"), 32).build()
    assert torch.equal(model.conv1.weight, trained.conv1.weight) and record["pretrained"].endswith("w.pth")
    torch.save(timm.create_model("resnet34").state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(ModelError, match="do not fit ResNet: .* missing keys"):
        BackboneSpec("resnet18", str(tmp_path / "wrong.pth")).build()


def test_s3_prefix_and_manifest_embed_as_the_local_files(tmp_path, bucket):
    src = tmp_path / "imgs"
    ids = write_images(src, 10)
    fs = s3fs.S3FileSystem()
    fs.put(str(src) + "/", f"{bucket}/pool/", recursive=True)
    listed = sources.read_source(f"{bucket}/pool/")  # what embed lists of a prefix (the same pipeline follows)
    assert listed.column_names == ["id", "uri"] and listed.column("id").to_pylist() == sorted(ids)
    assert listed.column("uri").to_pylist() == [f"{bucket}/pool/{i}" for i in sorted(ids)]

    # a manifest with ids, labels and a pass-through column, itself on S3, with relative uris; the store on S3
    rows = [(f"im-{i}", f"pool/{k}", i % 3, f"cam{i % 2}") for i, k in enumerate(ids)]
    csv = "id,uri,label,camera\n" + "".join(f"{a},{b},{c},{d}\n" for a, b, c, d in rows)
    fs.pipe(f"{bucket}/manifest.csv", csv.encode())
    store = activeft.embed(f"{bucket}/manifest.csv", f"{bucket}/labeled", partition_size=4, **TINY)
    assert fs.exists(f"{bucket}/labeled/_manifest.json") and fs.exists(f"{bucket}/labeled/part-00002.parquet")
    table = store.read()
    assert table.column_names == ["id", "uri", "embedding", "label", "camera"]
    got = {r["id"]: (r["label"], r["camera"], r["uri"]) for r in table.to_pylist()}
    assert got == {a: (c, d, f"{bucket}/{b}") for a, b, c, d in rows}
    keys = [r["uri"].split("/pool/")[1] for r in table.to_pylist()]
    direct = direct_embeddings(src, keys)  # a forward pass of the local files in this process
    np.testing.assert_allclose(store.embeddings(), direct, atol=1e-4)


def test_bad_inputs_one_line_each(tmp_path, capsys):
    from activeft.cli import main

    src = tmp_path / "imgs"
    write_images(src, 2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_uri.csv").write_text("id,path\na,b.png\n")
    (tmp_path / "dupes.csv").write_text(f"id,uri\na,{src}/img0000.png\na,{src}/img0001.jpg\n")
    (tmp_path / "clash.csv").write_text(f"uri,embedding\n{src}/img0000.png,x\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("precious")
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    out = str(tmp_path / "out")
    cases = [
        ([str(tmp_path / "missing"), "-o", out], "source .*missing does not exist"),
        ([str(tmp_path / "empty"), "-o", out], "has no images"),
        ([str(tmp_path / "no_uri.csv"), "-o", out], "has no 'uri' column"),
        ([str(tmp_path / "dupes.csv"), "-o", out], "1 duplicate ids \\(e.g. 'a'\\)"),
        ([str(tmp_path / "clash.csv"), "-o", out], "column\\(s\\) 'embedding', which the store writes itself"),
        ([str(src), "-o", out, "--model", "resnet_18"], "unknown timm model 'resnet_18'.*did you mean 'resnet18'"),
        ([str(src), "-o", str(tmp_path / "full"), "--pretrained", "none"], "is not empty; pass --resume"),
        ([str(src), "-o", str(tmp_path / "full"), "--overwrite"], "not an embedding store; refusing"),
        ([str(src), "-o", out, "--pretrained", str(tmp_path / "nope.pth")], "weights file .*nope.pth does not exist"),
        ([str(src), "-o", out, "--batch-size", "0"], "'batch_size' parameter of embed must be an int >= 1"),
        ([str(src), "-o", out, "--num-actors", "3,1"], "'num_actors' parameter"),
    ]
    if os.geteuid() != 0:  # root can write anywhere
        cases.append(([str(src), "-o", str(tmp_path / "ro" / "store"), "--pretrained", "none"], "is not writable"))
    for argv, pattern_ in cases:
        assert main(["embed", *argv]) == 1, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err, err
        assert re.search(pattern_, err), (pattern_, err)
    assert (tmp_path / "full" / "keep.txt").read_text() == "precious"
    assert not os.path.exists(out)


def test_import_embeddings(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5)).astype(np.float32)
    table = pa.table({"key": [f"k{i}" for i in range(7)], "vec": [list(map(float, r)) for r in x],
                      "label": [i % 2 for i in range(7)]})
    pq.write_table(table, tmp_path / "emb.parquet")
    store = activeft.import_embeddings(str(tmp_path / "emb.parquet"), str(tmp_path / "s"), id_column="key",
                                       embedding_column="vec", partition_size=3)
    assert store.ids() == [f"k{i}" for i in range(7)] and len(store.manifest["shards"]) == 3
    np.testing.assert_allclose(store.embeddings(), x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6)
    assert store.read(columns=["label"]).column("label").to_pylist() == [i % 2 for i in range(7)]
    assert store.read(2, 5, ["id"]).column("id").to_pylist() == ["k2", "k3", "k4"]

    np.save(tmp_path / "x.npy", x)
    (tmp_path / "ids.txt").write_text("\n".join(f"n{i}" for i in range(7)))
    npy = activeft.import_embeddings(str(tmp_path / "x.npy"), str(tmp_path / "n"), ids=str(tmp_path / "ids.txt"))
    np.testing.assert_allclose(npy.embeddings(), store.embeddings())

    bad = x.copy()
    bad[4, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(SourceError, match="1 embeddings contain NaN or inf \\(first: id 'n4'\\)"):
        activeft.import_embeddings(str(tmp_path / "nan.npy"), str(tmp_path / "o1"), ids=str(tmp_path / "ids.txt"))
    (tmp_path / "dup.txt").write_text("a\nb\na\nc\nd\ne\nf")
    with pytest.raises(SourceError, match="1 duplicate ids \\(e.g. 'a'\\)"):
        activeft.import_embeddings(str(tmp_path / "x.npy"), str(tmp_path / "o2"), ids=str(tmp_path / "dup.txt"))
    pq.write_table(pa.table({"id": ["a", "b"], "embedding": [[1.0, 0.0], [1.0, 0.0, 0.0]]}), tmp_path / "mixed.parquet")
    with pytest.raises(StoreError, match="mixed lengths"):
        activeft.import_embeddings(str(tmp_path / "mixed.parquet"), str(tmp_path / "o3"))
    with pytest.raises(SourceError, match="has no column 'emb'"):
        activeft.import_embeddings(str(tmp_path / "emb.parquet"), str(tmp_path / "o4"), id_column="key",
                                   embedding_column="emb")
    with pytest.raises(OutputExistsError):
        activeft.import_embeddings(str(tmp_path / "x.npy"), str(tmp_path / "n"), ids=str(tmp_path / "ids.txt"))
    for o in ("o1", "o2", "o3", "o4"):
        assert not (tmp_path / o).exists()  # a failed fresh import leaves nothing behind
    with pytest.raises(SourceError, match="NaN"):  # bad input found late must not cost the store it would replace
        activeft.import_embeddings(str(tmp_path / "nan.npy"), str(tmp_path / "n"), ids=str(tmp_path / "ids.txt"),
                                   overwrite=True, partition_size=2)
    np.testing.assert_allclose(activeft.EmbeddingStore(str(tmp_path / "n")).embeddings(), store.embeddings())


def test_failed_object_store_write_leaves_no_object(bucket):
    from activeft.io import storage

    with pytest.raises(RuntimeError), storage.atomic_output(f"{bucket}/part-00000.parquet") as f:
        f.write(b"half a shard")
        raise RuntimeError("worker died")
    assert not storage.exists(f"{bucket}/part-00000.parquet")
    storage.write_bytes(f"{bucket}/ok.bin", b"whole")
    assert storage.read_bytes(f"{bucket}/ok.bin") == b"whole"


_decode_batch = pipeline.decode_batch


def logged_decode_batch(batch, config):
    """``decode_batch``, logging each call's rows and image column type into ``<tmp>/decode-log``."""
    out = _decode_batch(batch, config)
    log = batch.column("uri")[0].as_py().split("/imgs/")[0] + "/decode-log"
    os.makedirs(log, exist_ok=True)
    with open(f"{log}/{uuid.uuid4().hex}.json", "w") as f:
        json.dump({"rows": batch.num_rows, "image": str(out.schema.field("image").type)}, f)
    return out


def test_decode_spread_over_small_blocks_whatever_the_partition_size_with_a_weights_file(tmp_path, monkeypatch):
    import timm
    from safetensors.torch import save_file

    src = tmp_path / "imgs"
    write_images(src, 24)
    torch.manual_seed(123)
    save_file(timm.create_model("resnet18", num_classes=10).state_dict(), str(tmp_path / "w.safetensors"))
    monkeypatch.setattr(pipeline, "decode_batch", logged_decode_batch)
    weights = {**TINY, "pretrained": str(tmp_path / "w.safetensors")}
    store = activeft.embed(str(src), str(tmp_path / "store"), **weights)  # one partition of 10,000
    calls = [json.loads(p.read_text()) for p in (tmp_path / "decode-log").iterdir()]
    assert sum(c["rows"] for c in calls) == 24
    assert len(calls) >= 4 and max(c["rows"] for c in calls) <= 6  # at least two blocks per CPU (2 CPUs)
    assert {c["image"] for c in calls} == {"ArrowTensorTypeV2(shape=(3, 32, 32), dtype=uint8)"}
    assert [s["rows"] for s in store.manifest["shards"]] == [24]
    assert len(store.manifest["backbone"]["weights"]["sha256"]) == 64
    spec = BackboneSpec("resnet18", weights["pretrained"], 32)
    assert np.abs(store.embeddings() - direct_embeddings(src, store.ids(), spec)).max() < 1e-4


def test_take_rows_copies_across_chunks_once():
    from ray.data.extensions import ArrowTensorArray

    a = np.random.default_rng(0).integers(0, 255, (10, 3, 4, 4), dtype=np.uint8)
    column = pa.chunked_array([ArrowTensorArray.from_numpy(a[lo:hi]) for lo, hi in ((0, 3), (3, 3), (3, 10))])
    for rows in (np.arange(10), np.array([0, 2, 3, 9]), np.array([4])):
        assert np.array_equal(pipeline.take_rows(column, rows), a[rows])
    out = np.zeros((2, 3, 4, 4), np.uint8)
    assert pipeline.take_rows(column, np.array([2, 3]), out) is out and np.array_equal(out, a[[2, 3]])
