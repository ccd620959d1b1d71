"""A Recorder's run ends with an END that lists every file written, with its length: the
reader checks them (docs/format.md), so a normal run must read back without an error."""

from __future__ import annotations

import pytest
from capture_helpers import assert_end_lists_every_file, batches, run_values, train

from pytest_modelrules import Recorder, modes, open_run

torch = pytest.importorskip("torch")


def test_a_recorder_run_closed_normally_lists_every_file_and_reads_back(tmp_path, tiny):
    model, loss_fn, opt = tiny
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1) as rec:
        train(model, loss_fn, opt, batches(3))
        rec.set_mode(modes.EVAL)
        with torch.no_grad():
            model(batches(1)[0][0])
    assert not rec.dead, rec.error
    assert_end_lists_every_file(tmp_path / "run")
    run = open_run(tmp_path / "run")
    assert run.has_ended and run.steps() == [0, 1, 2, 3]
    assert any((tmp_path / "run" / "workers" / "worker_0" / "rows").iterdir())
    values = run_values(tmp_path / "run")  # every file read: no length is short
    assert {step for _, step in values} == {0, 1, 2, 3}
