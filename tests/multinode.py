"""Multi-node runs on one machine: a ``ray.cluster_utils.Cluster`` of three 1-CPU nodes, the head and
two more (separate raylets and object stores), in its own process (``tests/test_multinode.py``
starts it: a process can join one Ray only). Writes what it saw as JSON to ``argv[2]``.

- embed with two actors (a CPU each on several nodes, so on two of the 1-CPU nodes), and a node (not the
  head) that runs one removed while it runs (a new node added 3 s later): the actors ran on two nodes or
  more; every image is in the store once, with the embedding a forward pass in this process gives;
- select with W = 3 (a worker a node), one node removed once Ray Train has registered a checkpoint and a
  new one added 3 s later: the run restarts from the checkpoint and selects what the run in this
  process selects, with the same loss at every iteration;
- a hierarchical select (3 cells) with its tasks on the three nodes: what it selects in this process;
- a killed head: a CLI select (W = 2) whose driver and whole cluster are killed once Ray Train has
  registered a checkpoint; ``--resume`` on a new cluster continues from it to the same selection.
"""

import glob
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np


def until(check, what: str, timeout: float = 120.0) -> None:
    start = time.time()
    while not check():
        if time.time() - start > timeout:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(0.1)


def in_thread(fn):
    """Run ``fn`` in a thread; ``join()`` returns its result or raises its error."""
    out = {}

    def body():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001  (re-raised by join)
            out["error"] = e

    thread = threading.Thread(target=body)
    thread.start()

    def join():
        thread.join(300)
        if "error" in out:
            raise out["error"]
        return out["value"]

    return join


def lose_a_node(cluster, node, seen: dict, key: str):
    """Remove ``node`` (its raylet, object store and workers, killed), add a fresh 1-CPU node 3 s later."""
    cluster.remove_node(node, allow_graceful=False)
    seen[key] = time.time()
    time.sleep(3)
    return cluster.add_node(num_cpus=1)


def main(work: str, report: str) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    os.environ["RAY_ADDRESS"] = cluster.address
    import ray
    from images import direct_embeddings, write_images
    from ray.util.state import list_actors, list_tasks

    import activeft
    from activeft.io import protocol

    seen: dict = {"started": time.time()}
    try:
        # embed with two actors (on two nodes), a node running one lost while it embeds
        ids = write_images(os.path.join(work, "img"), 96, size=32)
        embed = dict(model="resnet18", pretrained="none", image_size=32, batch_size=2, partition_size=8, num_actors=2)
        join = in_thread(lambda: activeft.embed(os.path.join(work, "img"), os.path.join(work, "store"), **embed))
        head, hosts, victims = cluster.head_node.node_id, set(), set()

        def embedding_off_the_head() -> bool:  # an embed actor alive on a node other than the head
            actors = [a for a in list_actors(detail=True, limit=10_000) if a.state == "ALIVE"]
            embedders = {a.node_id for a in actors if "Embedder" in a.class_name}
            seen["embed_actors"] = sorted({f"{a.class_name} on {a.node_id}" for a in actors})  # (for a failure)
            hosts.update(embedders)
            # not a node of Ray Data's own actors (a lost one fails the run: README, Selection)
            victims.update(embedders - {a.node_id for a in actors if "Embedder" not in a.class_name} - {head})
            return bool(victims)

        until(embedding_off_the_head, "an embed actor on a node other than the head")
        victim = next(n for n in nodes if n.node_id in victims)
        nodes[nodes.index(victim)] = lose_a_node(cluster, victim, seen, "embed_node_lost")
        store = join()
        hosts.update(a.node_id for a in list_actors(detail=True, limit=10_000) if "Embedder" in a.class_name)
        seen["embed_nodes"] = len(hosts - {None})
        seen["embed_ids_equal"] = sorted(store.ids()) == sorted(ids)
        seen["embed_max_error"] = float(np.abs(store.embeddings() - direct_embeddings(
            os.path.join(work, "img"), store.ids())).max())
        seen["embed_finished"] = time.time()

        rng = np.random.default_rng(0)
        x = rng.normal(size=(6, 16))[rng.integers(0, 6, 900)] + 0.5 * rng.normal(size=(900, 16))
        np.save(os.path.join(work, "x.npy"), x.astype("float32"))
        with open(os.path.join(work, "ids.txt"), "w") as f:
            f.write("\n".join(f"r{i}" for i in range(900)))
        pool = activeft.import_embeddings(os.path.join(work, "x.npy"), os.path.join(work, "pool"),
                                          ids=os.path.join(work, "ids.txt"))

        # select W = 3, a worker a node; one of them lost once Ray Train registered a checkpoint
        params = dict(method="activeft", iterations=50, seed=2, checkpoint_every=10)
        clean = activeft.select(pool, 15, **params)
        out = os.path.join(work, "sel")
        join = in_thread(lambda: activeft.select(pool, 15, num_workers=3, output=out, **params))
        until(lambda: glob.glob(os.path.join(out, "_work", "**", "checkpoint_manager_snapshot.json"), recursive=True),
              "a registered checkpoint")
        actors = [a for a in list_actors(detail=True, limit=10_000) if a.state == "ALIVE"]
        workers = {a.node_id for a in actors if a.class_name == "RayTrainWorker"}
        seen["select_nodes"] = len(workers)
        others = {a.node_id for a in actors if a.class_name != "RayTrainWorker"}  # the controller stays
        lose_a_node(cluster, next(n for n in nodes if n.node_id in workers - others), seen, "select_node_lost")
        sel = join()
        seen["select_resumed_from"] = sel.info["resumed_from_iteration"]
        seen["select_equal"] = sel.ids == clean.ids
        seen["select_loss_equal"] = bool(np.allclose(sel.info["loss_history"], clean.info["loss_history"], rtol=1e-6))
        seen["select_finished"] = time.time()

        # hierarchical: the partition's sample, the regroup and the cells as Ray tasks over the three nodes
        cells = dict(method="kmeans", partitions=3, seed=2)
        spread = activeft.select(pool, 15, num_workers=3, **cells)

        def cell_nodes():  # (the task events reach the state API a second or so after the tasks)
            return {t.node_id for t in list_tasks(detail=True, limit=10_000) if "_select_cell" in t.name} - {None}

        until(lambda: len(cell_nodes()) >= 2, "the cell tasks' events on two nodes", timeout=30)
        seen["cells_nodes"] = len(cell_nodes())
        seen["cells_equal"] = spread.ids == activeft.select(pool, 15, **cells).ids
        seen["cells_finished"] = time.time()

        # a killed head: the driver on it dies too (as a `ray job submit` driver does); on a new cluster,
        # --resume finishes the run from its last registered checkpoint
        os.environ[protocol.EXPIRY_ENV] = "3"  # (the killed driver's output lease expires in 3 s)
        out = os.path.join(work, "sel-head")
        argv = ["select", pool.uri, "--budget", "15", "-o", out, "--method", "activeft", "--iterations", "50",
                "--seed", "2", "--checkpoint-every", "10", "--num-workers", "2"]
        with open(os.path.join(work, "driver.log"), "w") as log:
            driver = subprocess.Popen([sys.executable, "-m", "activeft.cli", *argv], stdout=log, stderr=log)
        until(lambda: glob.glob(os.path.join(out, "_work", "**", "checkpoint_manager_snapshot.json"), recursive=True),
              "a registered checkpoint of the driver's run")
        driver.kill()
        killed = time.time()
        ray.shutdown()
        cluster.shutdown()  # the head, its GCS and every node
        seen["head_killed"] = time.time()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        os.environ["RAY_ADDRESS"] = cluster.address
        time.sleep(max(0.0, killed + 3.5 - time.time()))  # the dead run's 3 s lease, expired (usually already)
        resumed = activeft.select(pool, 15, num_workers=2, output=out, resume=True, **params)
        seen["head_resumed_from"] = resumed.info["resumed_from_iteration"]
        seen["head_equal"] = resumed.ids == clean.ids
        seen["head_finished"] = time.time()
    finally:
        with open(report, "w") as f:
            json.dump(seen, f)
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
