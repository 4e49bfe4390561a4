"""Dockerfile.gpu, read with Docker's own parser (PyPI ``dockerfile``, BuildKit's Go parser; no daemon
needed, and none runs here, so the images are never built in these tests): three targets, and the
gpu one installs the CUDA runtimes the gpu queue needs and not the CPU onnxruntime that would shadow
onnxruntime-gpu."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class Cmd:
    def __init__(self, cmd: str, value: list[str]):
        self.cmd, self.value = cmd, tuple(value)


PARSE = ("import dockerfile, json, sys; print(json.dumps([[c.cmd, list(c.value)] "
         "for c in dockerfile.parse_file(sys.argv[1])]))")


@functools.cache
def _commands() -> tuple[Cmd, ...]:
    # in a child: the parser is Go (cgo), whose runtime has crashed a pytest process with torch and
    # onnxruntime loaded (SIGSEGV); alone in its own interpreter it is fine
    out = subprocess.run([sys.executable, "-c", PARSE, str(ROOT / "Dockerfile.gpu")], capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:
        pytest.fail(f"Docker's parser (the dev extra's `dockerfile`) failed: {out.stderr[-1500:]}")
    return tuple(Cmd(c, v) for c, v in json.loads(out.stdout))


def _stages() -> dict[str, list]:
    stages: dict[str, list] = {}
    current = None
    for c in _commands():
        if c.cmd.upper() == "FROM":
            current = c.value[2] if len(c.value) > 2 and c.value[1].upper() == "AS" else c.value[0]
            stages[current] = [c]
        else:
            stages[current].append(c)
    return stages


def _runs(cmds) -> str:
    return " ".join(" ".join(c.value) for c in cmds if c.cmd.upper() == "RUN")


def test_three_targets_and_the_gpu_worker_is_the_default():
    stages = _stages()
    assert list(stages) == ["cpu", "tf", "gpu"]  # the last stage is what a plain `docker build` makes
    cmd = {name: next(c.value for c in reversed(cmds) if c.cmd.upper() == "CMD") for name, cmds in stages.items()}
    assert cmd["cpu"][:2] == ("modelport", "serve") and cmd["tf"] == ("modelport", "worker", "--queues",
                                                                                "cpu.tf,cpu.coreml-tf")
    tf_runs = _runs(stages["tf"])  # both toolchains, made by the scripts development uses
    assert "./scripts/setup-tf-toolchain" in tf_runs and "./scripts/setup-coreml-tf-toolchain" in tf_runs
    assert cmd["gpu"] == ("modelport", "worker", "--queues", "gpu")


def test_the_gpu_image_installs_torch_cuda_onnxruntime_gpu_and_tensorrt():
    gpu = _stages()["gpu"]
    assert gpu[0].value[0].startswith("nvidia/cuda:") and "cudnn" in gpu[0].value[0]
    runs = _runs(gpu)
    args = {c.value[0].split("=", 1)[0]: c.value[0].split("=", 1)[1] for c in gpu if c.cmd.upper() == "ARG"}
    assert args["TORCH"] == '"torch==2.13.0"' and "download.pytorch.org/whl/cpu" not in runs  # a CUDA torch
    extras = re.findall(r'"\.\[([^\]]*)\]"', runs)
    assert extras == ["postgres,s3,celery,gpu"]  # onnxruntime-gpu, not the `onnxruntime` extra's CPU package
    assert "--extra-index-url https://pypi.nvidia.com" in runs and args["TENSORRT"].startswith('"tensorrt-cu12')
    assert "! pip show onnxruntime" in runs and "import tensorrt, onnxruntime, torch" in runs
    env = " ".join(" ".join(c.value) for c in gpu if c.cmd.upper() == "ENV")
    assert "CUDA_DEVICE_ORDER PCI_BUS_ID" in env and "MODELPORT_TENSORRT_CACHE_DIR" in env
    assert any(c.cmd.upper() == "COPY" and c.value[0] == "scripts/gpu-check" for c in gpu)
