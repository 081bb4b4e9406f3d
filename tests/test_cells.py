"""Hierarchical selection (``select --partitions``): the budget split, the cells, resuming, Ray tasks."""

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import activeft
from activeft.engine import Collectives, Pool, generator, sample_rows
from activeft.errors import ActiveftError
from activeft.io.store import EmbeddingStore
from activeft.select import cells, get_selector, list_selectors
from activeft.select import coverage as coverage_module
from activeft.select.cells import _select_cell, read_cell, regroup, resolve_partitions, select_in_cells
from activeft.select.coverage import coverage_by_shard
from activeft.select.quotas import column_groups, split_budget

pytestmark = pytest.mark.timeout(240)


def test_budget_split_by_rows_with_largest_remainders_and_small_cells_giving_all():
    assert split_budget(np.array([50, 30, 20]), np.array([50, 30, 20]), 10).tolist() == [5, 3, 2]
    # exact shares 3.33 each: the remainders tie, the smaller cell first
    assert split_budget(np.array([10, 10, 10]), np.array([10, 10, 10]), 10).tolist() == [4, 3, 3]
    # cell 0 has 2 free rows (the rest labeled): it gives both, the rest by the same rule
    assert split_budget(np.array([60, 30, 10]), np.array([2, 30, 10]), 20).tolist() == [2, 14, 4]
    got = split_budget(np.array([1, 1, 500, 7]), np.array([1, 0, 500, 7]), 509)
    assert got.tolist() == [1, 0, 500, 7]


def test_auto_cuts_only_large_pools_and_under_30_picks_a_cell_gives_each_pick_a_cell(caplog):
    assert resolve_partitions("off", 10**9, 10**7) == 0 and resolve_partitions(7, 1000, 210) == 7
    assert resolve_partitions("auto", 1_000_000, 10**4) == 0 and resolve_partitions("auto", 1_000_001, 10**4) == 5
    assert not caplog.records
    with caplog.at_level(logging.INFO, logger="activeft"):
        assert resolve_partitions("auto", 10**9, 10**7) == 4000 and not caplog.records
        assert resolve_partitions("auto", 2_000_000, 50) == 50  # not 8 cells of 6.25 picks: a cell a pick
        assert [r.levelno for r in caplog.records] == [logging.INFO]
        assert "50 cells of ~40000 rows, not 8 of ~250000: a cell a pick" in caplog.text
        caplog.clear()
        assert resolve_partitions("auto", 2_000_000, 240) == 8  # 30 picks a cell
        assert resolve_partitions("auto", 10**9, 1000) == 1000  # cells of 1M rows, a pick each
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert "1000 cells of ~1000000 rows, not 4000 of ~250000: a cell a pick" in caplog.text
        caplog.clear()
        assert resolve_partitions("auto", 30_000_000, 2000) == 1024  # 120 cells wanted; at most PICK_CELLS, loudly
        assert "1024 cells for a budget of 2000 (1.95 picks a cell): under 30 picks a cell" in caplog.text
        assert resolve_partitions("auto", 10**9, 10**4) == 4000  # 2.5 picks a cell: as many as wanted, loudly
        assert "4000 cells for a budget of 10000 (2.5 picks a cell): under 30 picks a cell" in caplog.text
        assert resolve_partitions("auto", 10**9, 1) == 0  # flat
        caplog.clear()
        assert resolve_partitions(7, 1000, 209) == 7  # as asked, loudly
        assert "(29.9 picks a cell)" in caplog.text and "use --partitions 209" in caplog.text
        assert resolve_partitions(7, 1000, 7) == 7 and len(caplog.records) == 1  # a pick a cell: quiet
        caplog.clear()
        assert resolve_partitions(8, 100, 5) == 8  # as asked, loudly
    assert len(caplog.records) == 1 and "8 cells for a budget of 5: at least 3 cells get no pick" in caplog.text


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("cells")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 12))[rng.integers(0, 6, 900)] + 0.5 * rng.normal(size=(900, 12))
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(900)], "embedding": list(x.astype("float32")),
                             "g": np.arange(900) % 3}), d / "e.parquet")
    return activeft.import_embeddings(str(d / "e.parquet"), str(d / "store"), partition_size=300)


@pytest.mark.parametrize("method", list_selectors())
def test_cells_select_their_share_and_the_merge_is_deterministic(store, tmp_path, method):
    labeled = [f"r{i}" for i in range(0, 900, 45)]
    params = get_selector(method).test_params
    sel = activeft.select(store, 30, method=method, partitions=4, exclude=labeled, output=str(tmp_path / "s"),
                          **params)
    again = activeft.select(store, 30, method=method, partitions=4, exclude=labeled, **params)
    assert sel.ids == again.ids and len(set(sel.ids)) == 30 and not set(sel.ids) & set(labeled)
    cells = sel.info["partitions"]["cells_table"]
    assert [c["cell"] for c in cells] == [0, 1, 2, 3] and sum(c["rows"] for c in cells) == 900
    assert sum(c["excluded"] for c in cells) == len(labeled) and sum(c["budget"] for c in cells) == 30
    picked = sel.table.column("cell").to_numpy()
    assert np.bincount(picked, minlength=4).tolist() == [c["budget"] for c in cells]
    # round by round: the first picks of every cell come first
    first = len([c for c in cells if c["budget"]])
    assert sorted(picked[:first].tolist()) == [c["cell"] for c in cells if c["budget"]]
    assert json.loads((tmp_path / "s" / "selection.json").read_text())["config"]["partitions"] == 4


def test_auto_under_30_picks_a_cell_runs_a_cell_a_pick(store, monkeypatch):
    monkeypatch.setattr(cells, "AUTO_ABOVE", 600)  # the 900-row store as a large pool: 3 cells of 300 rows
    monkeypatch.setattr(cells, "CELL_ROWS", 300)
    sel = activeft.select(store, 12, method="kmeans", iterations=10)  # 4 picks a cell: 12 cells instead
    table = sel.info["partitions"]["cells_table"]
    assert sel.info["config"]["partitions"] == 12 and len(table) == 12 and sum(c["rows"] for c in table) == 900
    assert [c["budget"] for c in table] == [1] * 12  # a pick each, not by rows
    assert activeft.select(store, 90, method="kmeans", iterations=10).info["config"]["partitions"] == 3


def test_a_resumed_run_redoes_only_its_unfinished_cells(store, tmp_path, monkeypatch):
    selector = get_selector("kmeans")(seed=0, iterations=10)
    work = tmp_path / "work"
    args = dict(num_workers=1, use_gpu=False, work=str(work), precision=None)
    whole = select_in_cells(selector, store, 24, np.zeros(0, np.int64), 3, resume=False, **args)

    def stop_at_cell_1(selector, files, unit, *rest):
        if unit == 1:
            raise RuntimeError("stopped")
        return _select_cell(selector, files, unit, *rest)

    monkeypatch.setattr(cells, "_select_cell", stop_at_cell_1)
    with pytest.raises(RuntimeError, match="stopped"):
        select_in_cells(selector, store, 24, np.zeros(0, np.int64), 3, resume=False, **args)
    monkeypatch.undo()
    assert sorted(p.name for p in (work / "cells").iterdir()) == ["0.json"] and (work / "units").exists()
    kept = (work / "cells" / "0.json").stat().st_mtime_ns
    monkeypatch.setattr(cells, "_write_units", lambda *a: pytest.fail("the regrouped rows were written again"))
    resumed = select_in_cells(selector, store, 24, np.zeros(0, np.int64), 3, resume=True, **args)
    assert resumed["rows"] == whole["rows"] and (work / "cells" / "0.json").stat().st_mtime_ns == kept
    assert sorted(p.name for p in (work / "cells").iterdir()) == ["0.json", "1.json", "2.json"]
    assert not (work / "units").exists()  # removed once every cell is done


def test_cells_read_only_their_own_row_groups(store, tmp_path):
    measured = np.array([0, 5, 299, 300, 899])  # rows of every shard whose vectors the same pass reads
    found, vectors = regroup(store, str(tmp_path / "units"), group=("g", ["0", "1", "2"]), exclude=np.array([2, 5, 7]),
                             dropped=np.arange(0, 900, 3), measured=measured)  # units 1, 2 (unit 0 dropped)
    np.testing.assert_array_equal(vectors, store.embeddings()[measured])
    assert sorted(found) == [1, 2] and [found[u][1] for u in (1, 2)] == [300] * 2
    assert [found[u][2].tolist() for u in (1, 2)] == [[7], [2, 5]]
    files = found[1][0]
    assert len(files) == len(store.shard_bounds) == 3
    for f in files:  # a row group per unit: a unit's filter skips every other row group
        meta = pq.ParquetFile(f).metadata
        stats = [meta.row_group(g).column(0).statistics for g in range(meta.num_row_groups)]
        assert [(s.min, s.max) for s in stats] == [(1, 1), (2, 2)]
    got = _select_cell(get_selector("random")(seed=0), found[2][0], 2, found[2][2], 298, "cpu")["rows"]
    assert sorted(got) == [r for r in range(900) if r % 3 == 2 and r not in (2, 5)]
    rows, x = read_cell(found[1][0], 1)
    assert rows.tolist() == list(range(1, 900, 3))
    np.testing.assert_array_equal(x, store.embeddings()[1::3])


@pytest.mark.usefixtures("ray_session")
def test_cells_as_ray_tasks_select_the_same_as_in_process(store):
    selector = get_selector("herding")(seed=0)
    counts = [column_groups(store, "g", np.array([4, 5]), np.array([7]), num_workers=w) for w in (1, 2)]
    assert counts[0][0] == counts[1][0] == ["0", "1", "2"]  # rows 4 and 5 labeled, row 7 dropped
    assert counts[0][1].tolist() == counts[1][1].tolist() == [[300, 0, 0], [300, 1, 1], [300, 1, 0]]
    args = dict(groups=("g", counts[0][0], np.array([10, 12, 8])), use_gpu=False, work=None, resume=False,
                precision=None)  # quota groups, each cut into 2 cells: the partition, regroup and cell tasks
    one = select_in_cells(selector, store, 30, np.array([4, 5]), 2, num_workers=1, **args)
    tasks = select_in_cells(selector, store, 30, np.array([4, 5]), 2, num_workers=2, **args)
    assert tasks["rows"] == one["rows"] and len(set(one["rows"]) - {4, 5}) == 30
    assert np.bincount(np.array(one["rows"]) % 3).tolist() == [10, 12, 8]
    assert tasks["info"]["partitions"]["partition_inertia"] == one["info"]["partitions"]["partition_inertia"]
    random_rows = np.arange(1, 900, 30)
    by_shard = [coverage_by_shard(store, one["rows"], random_rows, num_workers=w, use_gpu=False, precision=None)
                for w in (1, 2)]
    assert by_shard[0]["coverage"] == by_shard[1]["coverage"] > by_shard[0]["coverage_random"]


def test_the_partition_is_fitted_on_a_fixed_sample_and_coverage_by_shard_equals_the_pool_jobs(store, monkeypatch):
    monkeypatch.setattr(cells, "PARTITION_SAMPLE", 50)  # 150 of the 900 rows for 3 cells
    fit = cells.fit_partition(store, 3, 0, num_workers=1, use_gpu=False, precision=None)
    assert fit["sample"] == 150 and fit == cells.fit_partition(store, 3, 0, num_workers=1, use_gpu=False,
                                                               precision=None)
    # cells of a pick each: their partition is the selection's k-means, fitted on up to PICK_SAMPLE rows
    picks = cells.fit_partition(store, 3, 0, one_pick=True, num_workers=1, use_gpu=False, precision=None)
    assert picks["sample"] == 900
    rows = torch.from_numpy(np.sort(sample_rows(900, 150, generator(0)).numpy()))
    x = torch.from_numpy(store.embeddings())
    centroids = torch.tensor(fit["centroids"])
    inertia = ((x[rows][:, None] - centroids[None]) ** 2).sum(2).min(1).values.sum()  # of the sample's rows
    assert float(inertia) == pytest.approx(fit["inertia"], rel=1e-4)
    selected, random_rows = np.arange(0, 900, 50), np.arange(7, 900, 90)
    pool = Pool(x, 0, 900)
    for n in (2000, 200):  # every row, then a sample of 200
        monkeypatch.setattr(coverage_module, "COVERAGE_ROWS", n)
        want = coverage_module.coverage_job(selected, random_rows, pool, Collectives(), None)
        got = coverage_by_shard(store, selected, random_rows, num_workers=1, use_gpu=False, precision=None)
        assert got["coverage_rows"] == want["coverage_rows"] == min(n, 900)
        assert got["coverage"] == pytest.approx(want["coverage"], abs=1e-7)
        assert got["coverage_random"] == pytest.approx(want["coverage_random"], abs=1e-7)


def test_a_cells_run_reads_the_store_three_times(store, monkeypatch):
    """The partition's sample, the regroup (which reads the coverage's measured rows too), the coverage's
    search: each reads every shard's embeddings once, nothing else reads them."""
    reads = []
    for name in ("embeddings", "embeddings_at"):
        real = getattr(EmbeddingStore, name)
        monkeypatch.setattr(EmbeddingStore, name, lambda self, *a, real=real, name=name, **k: (
            reads.append(name), real(self, *a, **k))[1])
    sel = activeft.select(store, 30, method="random", partitions=3)
    assert reads.count("embeddings") == reads.count("embeddings_at") / 2 == len(store.shard_bounds) == 3
    monkeypatch.setattr(coverage_module, "COVERAGE_ROWS", 200)  # a sample: the same number either way
    again = activeft.select(store, 30, method="random", partitions=3)
    got = coverage_by_shard(store, store.rows_of(again.ids), np.arange(30), num_workers=1, use_gpu=False,
                            precision=None)  # the measured rows gathered in a pass of their own
    assert again.info["coverage_rows"] == got["coverage_rows"] == 200
    assert again.ids == sel.ids and got["coverage"] == pytest.approx(again.info["coverage"], abs=1e-7)


def test_bad_partitions_are_one_line_and_write_nothing(store, tmp_path):
    out = tmp_path / "s"
    for kwargs, message in (({"partitions": 1}, "must be auto, off or a number of cells >= 2"),
                            ({"partitions": 901}, "partitions 901 for a pool of 900 selectable rows"),
                            ({"partitions": 3, "dedup": 0.9}, "dedup with partitions: a near-duplicate pair")):
        with pytest.raises(ActiveftError, match=message):
            activeft.select(store, 10, output=str(out), **kwargs)
        assert not out.exists()
