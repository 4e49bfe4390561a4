"""ONNX models on ONNX Runtime's CUDA execution provider (``onnxruntime-gpu``, the ``gpu`` queue).

The session asks for ``CUDAExecutionProvider`` on device 0 with the CPU provider behind it for
the nodes CUDA has no kernel for (ONNX Runtime's own placement). When the CUDA provider cannot
start (CUDA or cuDNN libraries missing, a driver too old) ONNX Runtime quietly builds a CPU-only
session; this runner refuses that session instead of timing the CPU under a GPU label.

Precision is pinned to fp32: ``use_tf32=0`` (ONNX Runtime 1.18 and later enable TF32 on Ampere
and later by default); an ONNX Runtime that does not know the option runs without it. Feeds and
outputs are numpy arrays: ONNX Runtime copies them to and from the device inside ``run``, so a
timed call is the whole round trip."""

from __future__ import annotations

from pathlib import Path

from app.runners.base import Runner, RunnerUnavailable, Runtime
from app.runners.onnxruntime_runner import OnnxRuntimeRunner

RUNTIME = Runtime("onnxruntime-cuda", module="onnxruntime", hardware="gpu", packages=("onnxruntime-gpu",))

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
NO_DEVICE = "no CUDA device on this host (nvidia-smi finds none)"


def providers_for(available: list[str], version: str, device_id: int = 0, *, tf32: bool = False) -> list:
    """The providers to ask for, or :class:`RunnerUnavailable` when this ONNX Runtime has no CUDA
    provider (the CPU package ``onnxruntime`` is installed, not ``onnxruntime-gpu``)."""
    if CUDA not in available:
        raise RunnerUnavailable(f"onnxruntime {version} here has no {CUDA} (its providers: {', '.join(available)}): "
                                "install onnxruntime-gpu in place of onnxruntime")
    return [(CUDA, {"device_id": str(device_id), "use_tf32": "1" if tf32 else "0"}), CPU]


def without_tf32(providers: list) -> list:
    """The same providers without the ``use_tf32`` option (for an ONNX Runtime that refuses it)."""
    return [(p[0], {k: v for k, v in p[1].items() if k != "use_tf32"}) if isinstance(p, tuple) else p
            for p in providers]


def check_session(in_use: list[str]) -> None:
    """Refuse a session ONNX Runtime silently built without the CUDA provider."""
    if CUDA not in in_use:
        raise RunnerUnavailable(f"onnxruntime could not start {CUDA} (CUDA or cuDNN libraries missing, or a driver "
                                f"too old for them) and fell back to {', '.join(in_use) or 'nothing'}; see the log")


class OnnxRuntimeCudaRunner(OnnxRuntimeRunner):
    def __init__(self, path: Path, precision: str, threads: int | None, device_id: int = 0):
        from app import host

        gpu = host.cuda_device()
        if gpu is None:
            raise RunnerUnavailable(NO_DEVICE)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RunnerUnavailable(f"onnxruntime is not installed here ({e}): install onnxruntime-gpu") from None
        providers = providers_for(ort.get_available_providers(), ort.__version__, device_id)
        preload = getattr(ort, "preload_dlls", None)  # 1.21+: CUDA/cuDNN from the nvidia-* wheels torch brings
        if preload is not None:
            try:
                preload()
            except Exception as e:  # noqa: BLE001 - the session below says whether the libraries were found
                print(f"[modelport] onnxruntime.preload_dlls: {e}", flush=True)
        try:
            super().__init__(path, precision, threads, providers)
        except Exception as e:
            if "use_tf32" not in str(e):
                raise
            providers = without_tf32(providers)  # an ONNX Runtime older than the option
            super().__init__(path, precision, threads, providers)
        in_use = self._sess.get_providers()
        check_session(in_use)
        tf32 = dict(providers[0][1]).get("use_tf32")
        self.info.runtime, self.info.device = RUNTIME.name, f"cuda:{device_id}"
        self.info.details.update(gpu=gpu.get("name"), compute_capability=gpu.get("compute_capability"),
                                 provider_options=self._sess.get_provider_options().get(CUDA, {}),
                                 tf32="off" if tf32 == "0" else "the provider's default (option unknown to this "
                                 "onnxruntime)")


def load(root: Path, paths: list[str], primary: str, *, precision: str = "fp32", threads: int | None = None,
         **kw) -> Runner:
    return OnnxRuntimeCudaRunner(Path(root) / primary, precision, threads)
