"""Three Ray nodes on this machine (``tests/multinode.py``, in its own process with its own head): embed
and select across nodes, a node lost in the middle of each, a hierarchical select's tasks on every node, and
a killed head whose run ``--resume`` finishes on a new cluster."""

import json
import os
import signal
import subprocess
import sys

import pytest

HERE = os.path.dirname(__file__)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_embed_and_select_survive_a_lost_node_and_a_lost_head(tmp_path):
    report = tmp_path / "report.json"
    # a session of its own: on a timeout, killing its process group stops that head and its nodes only
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "multinode.py"), str(tmp_path), str(report)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=540)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    seen = json.loads(report.read_text()) if report.exists() else {}
    assert proc.returncode == 0, (seen, out[-4000:])
    assert seen["embed_nodes"] >= 2 and seen["embed_ids_equal"] and seen["embed_max_error"] < 1e-4, seen
    assert seen["select_nodes"] == 3 and seen["select_resumed_from"] is not None, seen
    assert seen["select_equal"] and seen["select_loss_equal"], seen
    assert seen["cells_nodes"] >= 2 and seen["cells_equal"], seen
    assert seen["head_resumed_from"] and seen["head_equal"], seen
