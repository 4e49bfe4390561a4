"""The sandbox: limits, cancellation, crashes, and the per-toolchain interpreter."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from app.conversion import registry
from app.formats import detect_and_inspect
from app.formats.base import ModelFiles
from app.sandbox.io import Source
from app.sandbox.parent import SandboxFailure, run_edge
from tests import models


@pytest.fixture(scope="module")
def state_dict_source(tmp_path_factory) -> Source:
    out = tmp_path_factory.mktemp("sandbox")
    path = models.state_dict(out)
    insp = detect_and_inspect(ModelFiles(out, [path.name], path.name))
    return Source(root=out, paths=[path.name], primary=path.name, format="pytorch", inspection=insp)


EDGE = registry.by_name("pytorch->safetensors")


def run(src, tmp_path, **kw):
    kw = {"python": sys.executable, "timeout_s": 300, "memory_mb": 16384, **kw}
    return run_edge(EDGE, src, tmp_path / "out", {"weights_key": None}, log_path=tmp_path / "log.txt", **kw)


def test_converts_and_reports_inspection_and_versions(state_dict_source, tmp_path):
    result = run(state_dict_source, tmp_path)
    assert (tmp_path / "out" / result["primary"]).exists()
    assert result["inspection"]["format"] == "safetensors"
    assert result["versions"]["torch"].startswith("2.") and result["seconds"] > 0


def test_time_limit_stops_the_converter(state_dict_source, tmp_path):
    with pytest.raises(SandboxFailure) as e:
        run(state_dict_source, tmp_path, timeout_s=0.5, poll_every_s=0.1)
    assert "time limit" in e.value.error["message"]


def test_memory_limit_crash_is_reported(state_dict_source, tmp_path):
    with pytest.raises(SandboxFailure) as e:
        run(state_dict_source, tmp_path, memory_mb=150)
    assert e.value.error["out_of_memory"] is True
    assert "150 MiB" in e.value.error["hint"] and "MODELPORT_CONVERT_MEMORY_MB" in e.value.error["hint"]


def test_cancel_through_poll(state_dict_source, tmp_path):
    with pytest.raises(SandboxFailure) as e:
        run(state_dict_source, tmp_path, poll=lambda: True, poll_every_s=0.1)
    assert e.value.error.get("cancelled") is True


def test_the_edge_runs_under_the_toolchain_interpreter(state_dict_source, tmp_path):
    marker = tmp_path / "used"
    wrapper = tmp_path / "toolchain-python"
    wrapper.write_text(f"#!/bin/sh\necho \"$@\" > {marker}\necho \"$PYTHONPATH\" >> {marker}\n"
                       f"exec {sys.executable} \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    result = run(state_dict_source, tmp_path, python=str(wrapper))
    assert result["primary"].endswith(".safetensors")
    args, pythonpath = marker.read_text().splitlines()[:2]
    assert "app.sandbox.child" in args
    # another toolchain sees the app package and nothing else of the main environment
    root = Path(pythonpath.split(os.pathsep)[0])
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == ["app"]
    assert (root / "app").resolve() == Path(__file__).resolve().parents[2] / "app"


def test_missing_toolchain_interpreter(tmp_path):
    from app.config import Settings

    s = Settings(data_dir=tmp_path, toolchains={"tf": str(tmp_path / "nope" / "python")})
    assert s.toolchain_python("tf") is None and s.toolchain_python("main") == sys.executable
    assert os.path.basename(s.toolchain_python("main")).startswith("python")
    assert Path(s.toolchain_python("main")).exists()


def test_a_relative_toolchain_path_means_the_same_file_from_every_folder(tmp_path, monkeypatch, state_dict_source):
    """MODELPORT_TOOLCHAINS='{"tf": ".venv-tf/bin/python"}' passed the settings check and then failed in the
    sandbox, whose child starts in a temp folder: the path is made absolute where the settings are read."""
    from app.config import Settings

    wrapper = tmp_path / "interpreter"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    venv = tmp_path / "repo" / ".venv-x" / "bin"
    venv.mkdir(parents=True)
    link = venv / "python"
    link.symlink_to(wrapper)  # a venv's interpreter is a link: made absolute, never resolved to its target
    monkeypatch.chdir(tmp_path / "repo")
    s = Settings(data_dir=tmp_path, toolchains={"x": ".venv-x/bin/python"})
    assert s.toolchain_python("x") == str(link)
    monkeypatch.chdir(tmp_path)  # from elsewhere the same settings still name that file, and it runs
    assert run(state_dict_source, tmp_path, python=s.toolchain_python("x"))["primary"].endswith(".safetensors")
