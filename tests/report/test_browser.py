"""The report opened in headless Chromium: it renders, with every image decoded.

Chromium comes from Debian's package (``apt-get install -y chromium``); the test installs
nothing. Without it the test skips, saying how to install it, unless
``MODELRULES_REQUIRE_CHROMIUM=1`` (set in CI), where a missing browser is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pytest_modelrules.report.mapping import PLOTS

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WINDOW = (1280, 2000)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser's path; found before the report is drawn, so a skip costs nothing."""
    return find_chromium()


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = (
        "headless Chromium is not installed; install it with "
        "`apt-get update && apt-get install -y chromium` (Debian/Ubuntu)"
    )
    if os.environ.get("MODELRULES_REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"MODELRULES_REQUIRE_CHROMIUM=1 but {message}", pytrace=False)
    pytest.skip(message)


def run_chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [browser, *FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}"
    return proc


def test_report_renders_in_headless_chromium(chromium, demo_report, tmp_path):
    browser = chromium
    url = demo_report.resolve().as_uri()
    profile = tmp_path / "profile"
    dom = run_chromium(browser, profile, "--virtual-time-budget=5000", "--dump-dom", url)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, f"no <body> in the dumped DOM:\n{dom.stdout[:2000]}"
    # the page's own script marks <body> once every <img> has decoded (naturalWidth > 0)
    n = len(PLOTS)
    assert f'data-images-loaded="{n}/{n}"' in body.group(0), body.group(0)
    assert 'data-images-ok="true"' in body.group(0)
    assert dom.stdout.count("<img ") == n

    shot = tmp_path / "report.png"
    run_chromium(
        browser,
        profile,
        f"--screenshot={shot}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        url,
    )
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0])
    # not a blank page: text, table colours and a plot make the screenshot vary
    assert pixels[..., :3].std() > 0.05
    # the verdict colours of the rules table are there (a triggered rule's pale red)
    pale_red = np.all(np.abs(pixels[..., :3] - np.array([0xFF, 0xEB, 0xE9]) / 255) < 0.01, axis=-1)
    assert pale_red.sum() > 500
    keep = os.environ.get("MODELRULES_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
