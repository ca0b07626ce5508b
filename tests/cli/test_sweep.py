"""`prune --sweep`: one model at several targets into a folder, each point re-timed and its error measured, and a
self-contained HTML report that renders (a headless Chromium screenshot, where one is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from graphprune.models.demo import DEMO_MODEL
from tests.cli.test_cli import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep") / "out"
    code = run_cli_module(["prune", str(DEMO_MODEL), "-o", str(folder), "--sweep", "params=0.9,0.6", "--criterion",
                           "l2", "--round-to", "8"])
    assert code == 0
    return folder


def run_cli_module(argv: list[str]) -> int:
    from graphprune.cli.main import main

    return main(argv)


def test_every_target_is_written_and_reported(swept):
    names = sorted(p.name for p in swept.iterdir())
    assert names == ["digits_cnn-params-0.6.onnx", "digits_cnn-params-0.9.onnx", "report.html"]
    page = (swept / "report.html").read_text()
    assert page.count("<svg") == 2 and page.count("<circle") == 4  # two plots, a point per target in each
    assert "Kept width of each pruned layer" in page and "/stem/stem.0" in page
    assert "graph output" in page and "CPUExecutionProvider" in page
    assert not re.search(r"<script|https?://", page)  # self-contained: nothing runs, nothing is fetched


def test_a_sweep_into_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "taken").write_text("x")
    code, _, err = run_cli(capsys, "prune", DEMO_MODEL, "-o", tmp_path / "taken", "--sweep", "params=0.8",
                           "--criterion", "l2")
    assert_one_line_error(code, err)
    assert "is a file" in err


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no headless Chromium here (apt-get install chromium)")
def test_the_report_renders_in_a_browser(swept, tmp_path):
    """A screenshot of the page is not blank: plot lines, points and tables put thousands of dark pixels on it."""
    from PIL import Image

    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1000,1300", (swept / "report.html").as_uri()], capture_output=True, timeout=120,
                   check=True)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1300, 1000)
    assert (pixels < 128).sum() > 5000 and (pixels > 250).mean() > 0.5  # ink on a light page


def test_the_targets_share_one_sensitivity_measurement_and_prune_as_alone(tmp_path, caplog):
    """The default method with calibration data measures its sensitivity (on the fit part it validates with)
    once for the whole sweep, and each target's model is the one a prune at that target alone writes."""
    import logging

    import onnx

    from graphprune.models.demo import digits_test_set

    np.savez(tmp_path / "calib.npz", x=digits_test_set()[0][:64])
    caplog.set_level(logging.INFO, logger="graphprune")
    swept = tmp_path / "swept"
    assert run_cli_module(["prune", str(DEMO_MODEL), "-o", str(swept), "--sweep", "params=0.8,0.6", "--calib",
                           str(tmp_path / "calib.npz"), "--round-to", "8", "-v"]) == 0
    assert sum("sensitivity measured at" in r.getMessage() for r in caplog.records) == 1
    for target in ("0.8", "0.6"):
        alone = tmp_path / f"alone-{target}.onnx"
        assert run_cli_module(["prune", str(DEMO_MODEL), "-o", str(alone), "--target-params", target, "--calib",
                               str(tmp_path / "calib.npz"), "--round-to", "8", "-v"]) == 0
        point = swept / f"digits_cnn-params-{target}.onnx"
        ours, theirs = (onnx.load(str(p)).graph.initializer for p in (point, alone))
        assert [(t.name, t.raw_data) for t in ours] == [(t.name, t.raw_data) for t in theirs], target
    assert sum("sensitivity measured at" in r.getMessage() for r in caplog.records) == 3
