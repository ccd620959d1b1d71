"""Crash safety and live reading: a writer killed with SIGKILL mid-run, and a reader that
refreshes while a writer appends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from pytest_modelrules.store import RunWriter, open_run

REPO = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    sys.path.insert(0, {repo!r})
    from pytest_modelrules.store import RunWriter
    w = RunWriter(sys.argv[1])
    step = 0
    while True:
        for k in range(4):
            # value = step everywhere: a reader can check each value belongs to its step
            w.write(f"t{{k}}", np.full((64, 33), step, np.float32), step)
        w.write("loss", np.float32(step), step)
        if step == 20:
            print("ready", flush=True)
        step += 1
    """
)


@pytest.mark.slow
def test_kill_9_mid_run_keeps_every_committed_step(tmp_path):
    run_dir = tmp_path / "run"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(repo=str(REPO)))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    run = open_run(run_dir)
    steps = run.steps()
    assert len(steps) >= 20 and steps == list(range(len(steps)))
    assert not run.has_ended
    for name in ("t0", "t1", "t2", "t3", "loss"):
        t = run.tensor(name)
        assert t.steps() == steps  # the step in flight is not visible
        vals = t.values()
        assert all(float(np.asarray(v).reshape(-1)[0]) == s for s, v in vals.items())
        stack = t.series().stack()
        assert stack.shape[0] == len(steps)
    # a torn record of the step in flight (what a crash inside write() leaves) is ignored
    from pytest_modelrules.exceptions import CorruptRunError
    from pytest_modelrules.store.format import encode_record

    f = run_dir / "workers" / "worker_0" / "tensors" / "t3.mrt"
    rec = encode_record(np.zeros((64, 33), np.float32), step=steps[-1] + 5, mode=1,
                        mode_step=steps[-1] + 5, wall_time=0.0)  # fmt: skip
    # (the kill may itself have left a torn tail in t3: start from its last whole record)
    index = run._backend.tensor_records("t3").parts[0][1].index
    whole = index.end
    last_committed_payload = int(index.offsets[index.steps == steps[-1]][0])
    data = f.read_bytes()[:whole]
    f.write_bytes(data + rec[: len(rec) // 2])
    again = open_run(run_dir)
    assert again.steps() == steps
    assert again.tensor("t3").steps() == steps
    # but a file cut inside a committed step's record is damage, named as such
    f.write_bytes(data[: last_committed_payload + 100])
    with pytest.raises(CorruptRunError, match="truncated inside the record of committed step"):
        open_run(run_dir).tensor("t3").values()


def test_reader_refreshes_while_a_writer_appends(tmp_path):
    root = tmp_path / "r"
    w = RunWriter(root)
    w.write("x", np.zeros(3, np.float32), 0)
    run = open_run(root)
    assert run.steps() == []  # step 0 is not committed yet
    assert run.steps(show_incomplete_steps=True) == []
    seen = []
    for g in range(1, 40):
        w.write("x", np.full(3, g, np.float32), g)
        if g % 2 == 0:
            w.write("y", np.float32(g), g)
        if g % 7 == 0:
            run.refresh()
            steps = run.steps()
            assert steps == list(range(g))  # everything before the step in flight
            t = run.tensor("x")
            vals = t.values()
            assert list(vals) == steps
            assert all(v[0] == s for s, v in vals.items())
            assert t.series().stack()[:, 0].tolist() == list(map(float, steps))
            seen.append(len(steps))
            if "y" in run.tensor_names():
                assert run.tensor("y").steps() == [s for s in steps if s % 2 == 0 and s > 0]
    w.close()
    run.refresh()
    assert run.has_ended and run.steps() == list(range(40))
    assert seen == [7, 14, 21, 28, 35]


def test_partial_record_appended_by_hand_is_ignored_until_complete(tmp_path):
    root = tmp_path / "r"
    w = RunWriter(root)
    for g in range(5):
        w.write("x", np.arange(10, dtype=np.int64) + g, g)
    w.end_step()
    run = open_run(root)
    assert run.steps() == list(range(5))
    f = root / "workers" / "worker_0" / "tensors" / "x.mrt"
    before = f.read_bytes()
    # the writer appends a record in two pieces; the reader looks in between
    from pytest_modelrules.store.format import encode_record

    rec = encode_record(np.arange(10, dtype=np.int64) + 5, step=5, mode=1, mode_step=5, wall_time=0)
    with open(f, "ab") as fh:
        fh.write(rec[:30])
    run.refresh()
    assert run.tensor("x").steps() == list(range(5))
    with open(f, "ab") as fh:
        fh.write(rec[30:])
    run.refresh()
    assert run.tensor("x").steps() == list(range(5))  # complete, but not committed
    assert len(f.read_bytes()) == len(before) + len(rec)
    w.abort()
