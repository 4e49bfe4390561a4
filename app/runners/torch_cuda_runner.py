"""torch.export programs (``.pt2``) and TorchScript archives on torch with CUDA (the ``gpu`` queue).

The same loaders as the CPU runners (:mod:`app.runners.torch_export_runner`,
:mod:`app.runners.torchscript_runner`) with the model on ``cuda:0``: a ``.pt2`` goes through
``torch.export.passes.move_to_device_pass`` (weights, lifted constants and device arguments baked
into the graph), a TorchScript archive is loaded with ``map_location``. Feeds are copied to the
device, outputs back to the host (``.cpu()`` waits for the GPU), so a timed ``run`` is the whole
round trip a caller sees.

Precision is pinned to fp32: TF32 is off for matmuls and cuDNN convolutions (PyTorch enables it for
cuDNN by default, which on Ampere and later would round fp32 inputs to 10 mantissa bits), and the
float32 matmul precision is "highest"."""

from __future__ import annotations

from pathlib import Path

from app.runners.base import Runner, RunnerUnavailable, Runtime
from app.runners.torchscript_runner import import_torch

RUNTIME = Runtime("torch-cuda", module="torch", hardware="gpu", packages=("torch",))

DEVICE = "cuda:0"
NO_DEVICE = "no CUDA device on this host (nvidia-smi finds none)"


def why_not(torch_version: str, cuda_build: str | None, available: bool, device: dict | None) -> str | None:
    """Why torch cannot run on CUDA here, or None when it can: no GPU, a CPU-only build of torch, or
    a build the driver cannot serve."""
    if device is None:
        return NO_DEVICE
    if cuda_build is None:
        return (f"torch {torch_version} here is a CPU-only build, so it cannot use the {device.get('name', 'GPU')}: "
                "install a CUDA build of torch")
    if not available:
        return (f"torch {torch_version} (built for CUDA {cuda_build}) cannot use the {device.get('name', 'GPU')} "
                f"(driver {device.get('driver', '?')} too old for that CUDA, or the device is not visible to it)")
    return None


def cuda_torch():
    """torch, when it can run on this host's GPU; else :class:`RunnerUnavailable` saying why."""
    from app import host

    device = host.cuda_device()
    if device is None:  # before importing torch: a host without a GPU need not load it to say so
        raise RunnerUnavailable(NO_DEVICE)
    torch = import_torch()
    why = why_not(torch.__version__, torch.version.cuda, torch.cuda.is_available(), device)
    if why:
        raise RunnerUnavailable(why)
    return torch


def pin_fp32(torch) -> dict:
    """No TF32 anywhere: what a fp32 validation against a CPU reference needs. Returns the settings."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    return {"allow_tf32_matmul": False, "allow_tf32_cudnn": False, "float32_matmul_precision": "highest"}


class _Pinned(Runner):
    """Re-pins fp32 before each run: the switches are process-wide, and another model may flip them."""

    def __init__(self, inner: Runner, torch):
        self._inner, self._torch = inner, torch
        self.info = inner.info

    def inputs(self):
        return self._inner.inputs()

    def outputs(self):
        return self._inner.outputs()

    def run(self, feeds):
        pin_fp32(self._torch)
        return self._inner.run(feeds)

    def close(self) -> None:
        self._inner.close()
        self._torch.cuda.empty_cache()


def load(root: Path, paths: list[str], primary: str, *, precision: str = "fp32", threads: int | None = None,
         fmt: str | None = None, **kw) -> Runner:
    torch = cuda_torch()
    pinned = pin_fp32(torch)
    path = Path(root) / primary
    if fmt == "torchscript":
        from app.runners.torchscript_runner import TorchScriptRunner

        inner: Runner = TorchScriptRunner(path, precision, threads, device=DEVICE)
    else:
        from app.runners.torch_export_runner import TorchExportRunner

        inner = TorchExportRunner(path, precision, threads, device=DEVICE)
    inner.info.runtime, inner.info.device = RUNTIME.name, DEVICE
    inner.info.details.update(gpu=torch.cuda.get_device_name(0),
                              compute_capability="{}.{}".format(*torch.cuda.get_device_capability(0)),
                              cuda=torch.version.cuda, **pinned)
    return _Pinned(inner, torch)
