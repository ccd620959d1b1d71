"""``store.summary`` (``modelrules info``): what a run holds, for both layouts and for a
run whose workers committed different steps."""

from __future__ import annotations

import numpy as np

from pytest_modelrules.store import RunWriter, open_run
from pytest_modelrules.store.summary import format_summary, summarize


def test_summary_of_the_smdebug_fixture(smdebug_fixture_dir, smdebug_truth) -> None:
    run = open_run(smdebug_fixture_dir)
    summary = summarize(run)
    assert summary["layout"] == "smdebug" and summary["ended"] is True
    assert summary["steps"]["count"] == len(run.steps())
    assert summary["steps"]["modes"] == {
        mode: {"count": len(s), "first": s[0], "last": s[-1]}
        for mode in ("TRAIN", "EVAL")
        if (s := run.steps(mode=mode))
    }
    last = run.steps()[-1]
    for entry in summary["tensors"]:
        truth = smdebug_truth[f"{last}/{entry['name']}"]
        assert entry["steps"] == len(run.tensor(entry["name"]).steps())
        assert (entry["dtype"], entry["shape"]) == (str(truth.dtype), list(truth.shape))
    text = format_summary(summary)
    assert text.startswith(f"run: {smdebug_fixture_dir} (smdebug layout), 1 worker (worker_0)")
    assert f"tensors: {len(run.tensor_names())}" in text


def test_summary_of_shards_that_committed_different_steps(tmp_path) -> None:
    root = tmp_path / "r"
    w0 = RunWriter(root, "worker_0", rank=0, num_workers=2, metadata={"class_names": ["a", "b"]})
    w1 = RunWriter(root, "worker_1", rank=1, num_workers=2)
    for g in range(4):
        w0.write("loss", np.float32(g), g)
    for g in range(2):
        w1.write("loss", np.float32(100 + g), g)
        w1.write("only_1", np.zeros((2, 3), np.int16), g)
    w0.close()  # worker_1 never ends: the run has not ended
    w1.end_step()
    summary = summarize(open_run(root), regex="loss|only")
    assert summary["workers"] == ["worker_0", "worker_1"] and summary["ended"] is False
    assert summary["steps"]["count"] == 2  # the steps every worker committed
    by_name = {t["name"]: t for t in summary["tensors"]}
    assert by_name["only_1"]["dtype"] == "int16" and by_name["only_1"]["shape"] == [2, 3]
    text = format_summary(summary)
    assert "2 workers (worker_0, worker_1), not ended" in text
    assert "metadata: class_names (2 class names)" in text
