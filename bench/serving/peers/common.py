"""Shared by the peer servers (imported inside each peer's own venv): one ORT session per model,
1 intra-op thread, 1 inter-op thread, sequential execution -- the same settings as raw ORT and modelport."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import onnxruntime as ort  # noqa: E402


def session(path: str) -> "ort.InferenceSession":
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def model_paths() -> dict:
    """MODELS_DIR holds cnn.onnx and mlp.onnx."""
    d = os.environ["BENCH_MODELS_DIR"]
    return {n: os.path.join(d, f"{n}.onnx") for n in ("cnn", "mlp")}
