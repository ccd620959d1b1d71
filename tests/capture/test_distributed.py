"""A two-process DistributedDataParallel run (torchrun, gloo on CPU) reads back as one run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from capture_helpers import assert_end_lists_every_file

from pytest_modelrules import modes, open_run
from pytest_modelrules.store.names import reduction_tensor_name

pytest.importorskip("torch")
HERE = Path(__file__).resolve().parent
# torchrun's rendezvous and gloo pick free loopback ports; another process of a parallel test run
# can take one between the pick and the bind. Only these set-up failures are retried, once.
TRANSIENT = ("Address already in use", "RendezvousConnectionError", "Connection refused",
             "Connection reset by peer", "The server socket has failed to bind")  # fmt: skip


def test_ddp_two_ranks_write_one_run(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(HERE), os.environ.get("PYTHONPATH", "")]))  # fmt: skip
    for attempt in range(2):
        out = tmp_path / f"run{attempt}"  # a retry writes a fresh run
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(HERE / "ddp_worker.py"), str(out)]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        log = proc.stdout + proc.stderr
        if proc.returncode == 0 or not any(t in log for t in TRANSIENT):
            break
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = open_run(out)
    assert run.workers() == ["worker_0", "worker_1"] and run.num_workers == 2
    assert run.steps() == [0, 1, 2] and run.steps(show_incomplete_steps=True) == [0, 1, 2]
    assert run.has_ended
    assert_end_lists_every_file(out)  # each rank's END lists its own worker's files
    labels = run.tensor("CrossEntropyLoss_input_1")
    for step in range(3):
        assert labels.workers(step) == ["worker_0", "worker_1"]
        a = labels.value(step, modes.TRAIN, worker="worker_0")
        b = labels.value(step, modes.TRAIN, worker="worker_1")
        assert not np.array_equal(a, b)  # each rank saw its own batch
    # names without DDP's "module." prefix; weights agree across ranks (DDP keeps them in sync)
    l2 = run.tensor(reduction_tensor_name("fc.weight", "l2"))
    for step in range(3):
        np.testing.assert_allclose(
            l2.value(step, worker="worker_0"), l2.value(step, worker="worker_1")
        )
    assert not any(n.startswith("module.") for n in run.tensor_names())
