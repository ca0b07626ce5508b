"""Faults a trusted tool survives (issue 28): interrupted and killed runs leave nothing behind, beside the input
or the output; a model and its external data are published as one; a full temporary folder and damaged files
are one clear line. Kill tests run the installed `graphprune` command in a subprocess at seeded moments."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphprune.errors import GraphpruneError, ModelLoadError
from graphprune.io import runtime
from graphprune.io.load import load_model
from graphprune.io.save import model_files, save_model
from graphprune.io.scratch import spilled
from graphprune.io.staging import PREFIX, staging_folder, sweep
from graphprune.models.demo import DEMO_MODEL
from tests.cli.test_cli import assert_one_line_error, run_cli
from tests.cli.test_trust import demo_with_external_data, snapshot

FEEDS = {"x": np.zeros((1, 1, 8, 8), np.float32)}
COMMAND = [sys.executable, "-c", "import sys; from graphprune.cli.entry import main; sys.exit(main())"]


@pytest.fixture
def external_input(tmp_path):
    return demo_with_external_data(tmp_path, "model.onnx.data")


def prune_command(source: Path, target: Path) -> list[str]:
    return [*COMMAND, "prune", str(source), "-o", str(target), "--ratio", "0.3", "--data-free"]


def assert_clean_output(folder: Path, name: str = "out.onnx") -> None:
    """`folder` holds the output model and exactly the data files it names (or nothing): no staging folder,
    no data of another run; the model loads and runs."""
    entries = sorted(p.name for p in folder.iterdir())
    if name not in entries:
        assert entries == [], entries
        return
    files = model_files(folder / name)
    assert entries == sorted(f.name for f in files)
    assert runtime.run(runtime.session(folder / name), FEEDS)[0].shape == (1, 10)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_says_one_line_exits_128_plus_the_signal_and_leaves_nothing(external_input, tmp_path,
                                                                                       signum):
    """Signals at seeded moments of a run (importing, loading, calibrating, writing): each run either finished
    (exit 0) or says `graphprune: interrupted` / `terminated` on one line, exit 130 / 143, no traceback; the
    input's folder is as it was and the output folder holds a complete output or nothing."""
    before = snapshot(external_input.parent)
    rng = np.random.default_rng(int(signum))
    stopped = 0
    for attempt in range(4):
        out = tmp_path / f"out{attempt}"
        process = subprocess.Popen(prune_command(external_input, out / "out.onnx"), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        time.sleep(float(rng.uniform(0.3, 3.0)))
        process.send_signal(signum)
        _, err = process.communicate(timeout=120)
        if process.returncode != 0:
            stopped += 1
            said = "interrupted" if signum == signal.SIGINT else "terminated"
            assert (process.returncode, err.strip()) == (128 + signum, f"graphprune: {said}"), err
        assert snapshot(external_input.parent) == before
        if out.exists():
            assert_clean_output(out)
    assert stopped, "no signal arrived while the run was working: the delays are too long for this machine"


def test_a_killed_runs_debris_is_removed_by_the_next_run(external_input, tmp_path):
    """SIGKILL at seeded moments: nothing appears beside the input, ever; staging folders and data a killed run
    left beside the output are removed by the next run writing there, which ends with a clean output."""
    before = snapshot(external_input.parent)
    out = tmp_path / "out"
    rng = np.random.default_rng(1)
    for _ in range(4):
        process = subprocess.Popen(prune_command(external_input, out / "out.onnx"), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(0.5, 3.5)))
        process.kill()
        process.wait()
        assert sorted(p.name for p in external_input.parent.iterdir()) == sorted(before)
    done = subprocess.run(prune_command(external_input, out / "out.onnx"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert snapshot(external_input.parent) == before
    assert_clean_output(out)


KILL_BETWEEN_RENAMES = """
import os, signal, sys
import graphprune.io.save as save
from graphprune.io.load import load_model
save._between_renames = lambda: os.kill(os.getpid(), signal.SIGKILL)
save.save_model(load_model(sys.argv[1]), sys.argv[2], external_data=True)
"""


def test_a_model_and_its_data_are_published_as_one(external_input, tmp_path):
    """Killed after the new data are in place but before the model is: the old output is still a complete pair
    (its own data, its own outputs), and the next run removes the orphaned data. Replacing an output that had
    external data with one that needs none removes the superseded data file."""
    target = tmp_path / "out" / "out.onnx"
    save_model(load_model(external_input), target, external_data=True)
    old = runtime.run(runtime.session(target), FEEDS)[0]
    killed = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(external_input), str(target)])
    assert killed.returncode == -signal.SIGKILL
    assert len(list(target.parent.glob("out.onnx.*.data"))) == 2  # the old pair's data, and the orphan
    np.testing.assert_array_equal(runtime.run(runtime.session(target), FEEDS)[0], old)
    save_model(load_model(external_input), target, external_data=True)
    assert_clean_output(target.parent)
    assert len(model_files(target)) == 2
    save_model(load_model(DEMO_MODEL), target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.onnx"]


def test_staging_folders_of_live_runs_survive_a_sweep(tmp_path):
    """Only debris is swept: a folder another live run holds stays; once released, it goes."""
    with staging_folder(tmp_path) as folder:
        sweep(tmp_path)
        assert folder.is_dir()
        holder = subprocess.run([sys.executable, "-c", f"from graphprune.io.staging import sweep; "
                                 f"from pathlib import Path; sweep(Path({str(tmp_path)!r}))"])
        assert holder.returncode == 0 and folder.is_dir()
    os.mkdir(tmp_path / (PREFIX + "deadbeef"))  # as a killed run leaves it: nobody holds its lock
    sweep(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_full_temporary_folder_is_one_line_naming_tmpdir(monkeypatch, tmp_path):
    """Scratch space is reserved before it is mapped: a full disk is a clear error here, never a SIGBUS on a
    page written later. (A real 5 MiB tmpfs gives the same message; it needs root to mount.)"""
    def full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    with pytest.raises(GraphpruneError, match=f"temporary folder {tmp_path}.*TMPDIR"):
        spilled((1024, 1024), np.float32)
    monkeypatch.undo()
    assert spilled((4, 4), np.float32).sum() == 0


def test_a_filesystem_that_cannot_reserve_still_gets_scratch(monkeypatch):
    def unsupported(fd, offset, length):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    array = spilled((256, 256), np.float32)
    array[...] = 1
    assert array.shape == (256, 256) and float(array.sum()) == 256 * 256


def test_damaged_weights_name_the_tensor_the_file_and_the_fault(external_input, tmp_path):
    data = external_input.with_name("model.onnx.data")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "model.onnx").write_bytes(external_input.read_bytes())
    (truncated / "model.onnx.data").write_bytes(data.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match=r"tensor '.*' \(float \[.*\], \d+ bytes\) needs bytes .* of "
                                             r".*model.onnx.data, which has \d+: the data file is truncated"):
        load_model(truncated / "model.onnx")
    (truncated / "model.onnx.data").unlink()
    with pytest.raises(ModelLoadError, match="which does not exist"):
        load_model(truncated / "model.onnx")
    proto = onnx.load(DEMO_MODEL)
    weight = next(t for t in proto.graph.initializer if len(t.dims) == 4)
    weight.raw_data = weight.raw_data[:-4]
    onnx.save(proto, tmp_path / "short.onnx")
    with pytest.raises(ModelLoadError, match=f"tensor '{weight.name}' .* stores \\d+ bytes of data: the model file "
                                             "is damaged"):
        load_model(tmp_path / "short.onnx")


def test_a_folder_given_as_the_model_is_named_a_folder(capsys, tmp_path):
    for command in (["analyze", tmp_path], ["prune", tmp_path, "-o", tmp_path / "o.onnx"], ["bench", tmp_path]):
        code, _, err = run_cli(capsys, *command)
        assert_one_line_error(code, err)
        assert "is a folder" in err


def test_an_oserror_without_a_file_names_where_the_run_writes():
    from graphprune.cli.main import _describe

    assert _describe(OSError(28, "No space left on device", "/data/out.onnx")) == \
        "/data/out.onnx: No space left on device"
    assert "TMPDIR" in _describe(OSError(28, "No space left on device"))


@pytest.mark.skipif(sys.platform != "linux", reason="signals and flock as on Linux")
def test_the_entry_point_is_light_before_it_handles_signals():
    """`graphprune` installs its signal handlers before importing the heavy stack (onnx, ONNX Runtime), so a
    Ctrl-C while importing is one line too."""
    probe = "import sys, graphprune.cli.entry; print(sorted(m for m in ('onnx', 'onnxruntime', 'numpy') " \
            "if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "[]"


RACE = """
import sys
from graphprune.io.load import load_model
from graphprune.io.save import save_model
model = load_model(sys.argv[1])
for _ in range(5):
    save_model(model, sys.argv[2], external_data=True)
"""


MISSING_FILE = ("does not exist", "No such file", f"SystemError : {errno.ENOENT}")  # ORT's words for a gone file


def test_two_runs_writing_one_output_never_mix_their_files(external_input, tmp_path):
    """Two processes publishing to the same output at once: a model never reads another run's data. A reader
    that opened a model just before a newer one replaced it may find its data already removed (a clean "does
    not exist" / "No such file", or "SystemError : 2" — errno ENOENT — where ORT maps the data file; never a
    mix); reading the model file again gives the newer complete pair.
    Afterwards the folder holds one model and the data it names (after the next write, which removes what a
    lost race left)."""
    target = tmp_path / "out" / "out.onnx"
    save_model(load_model(external_input), target, external_data=True)
    racers = [subprocess.Popen([sys.executable, "-c", RACE, str(external_input), str(target)]) for _ in range(2)]

    def read() -> np.ndarray:
        try:
            return runtime.run(runtime.session(target), FEEDS)[0]
        except Exception as exc:  # noqa: BLE001 - ORT's error type for a missing data file
            assert any(m in str(exc) for m in MISSING_FILE), exc  # gone, never another's
            return read()

    while any(r.poll() is None for r in racers):
        assert read().shape == (1, 10)
    assert [r.returncode for r in racers] == [0, 0]
    save_model(load_model(external_input), target, external_data=True)
    assert_clean_output(target.parent)
