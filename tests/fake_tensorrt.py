"""A FAKE ``tensorrt`` module for unit tests. It is NOT NVIDIA's TensorRT and builds no engine.

TensorRT cannot be installed on the development hosts (no NVIDIA GPU, no wheel that imports), so
the pure-logic flow of the ONNX -> TensorRT edge and of the TensorRT runner is tested against this
stand-in, injected as ``sys.modules["tensorrt"]`` by the tests only. It mimics the parts of the
TensorRT 10/11 Python API the code calls (names and call shapes read from NVIDIA's documentation)
and records what it was asked to do, so tests can assert the flags, profiles, timing cache and
errors. What it "builds" is a plan-shaped byte string: the ``ftrt`` magic, the version bytes where
``app.formats.tensorrt`` reads them, and a JSON description of the build.

``make("10.9.0.34")`` gives a fake TensorRT 10 (``BuilderFlag.FP16``/``INT8``, ``STRONGLY_TYPED``
optional); ``make("11.0.0.1")`` one without the precision flags (TensorRT 11 removed them); ``make
("8.6.1.6", strongly_typed=False)`` one with ``EXPLICIT_BATCH`` and no strong typing."""

from __future__ import annotations

import enum
import importlib.machinery
import json
import types
from pathlib import Path

import numpy as np

MARK = b"FAKE-TENSORRT-PLAN"


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 8


_ONNX_TO_DT = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 9: DataType.BOOL,
               2: DataType.UINT8, 7: DataType.INT64}
_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
       DataType.BOOL: np.bool_, DataType.UINT8: np.uint8, DataType.INT64: np.int64}


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ErrorCode(enum.IntEnum):
    SUCCESS = 0
    INTERNAL_ERROR = 1
    UNSUPPORTED_NODE = 8


def make(version: str = "10.9.0.34", *, strongly_typed: bool = True, node_names_in_errors: bool = True):
    """A fresh fake module emulating TensorRT ``version``."""
    m = types.ModuleType("tensorrt")
    m.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # importlib.util.find_spec finds it
    m.__version__ = version
    m.FAKE = True
    major = int(version.split(".")[0])
    m.calls = []  # what was asked, in order: (what, detail)
    m.unsupported_ops = set()  # ONNX op types the fake parser refuses
    m.fail_build = None  # a message: the next build logs it as an error and returns None
    m.DataType, m.TensorIOMode, m.ErrorCode = DataType, TensorIOMode, ErrorCode

    net_flags = {}
    if major < 11:
        net_flags["EXPLICIT_BATCH"] = 0
    if strongly_typed:
        net_flags["STRONGLY_TYPED"] = 1 if major < 11 else 0
    m.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", net_flags) if net_flags else \
        type("NetworkDefinitionCreationFlag", (), {})
    builder_flags = {"DEBUG": 2, "REFIT": 4, "TF32": 6, "VERSION_COMPATIBLE": 13}
    if major < 11:
        builder_flags.update(FP16=0, INT8=1)
    m.BuilderFlag = enum.IntEnum("BuilderFlag", builder_flags)
    m.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    m.HardwareCompatibilityLevel = enum.IntEnum("HardwareCompatibilityLevel", {"NONE": 0, "AMPERE_PLUS": 1})

    def nptype(dt):
        return _NP[DataType(dt)]

    m.nptype = nptype

    class ILogger:
        def __init__(self):
            pass

        def log(self, severity, msg):  # pragma: no cover - overridden
            pass

    ILogger.Severity = Severity
    for s in Severity:
        setattr(ILogger, s.name, s)
    m.ILogger = ILogger

    class Logger(ILogger):
        def __init__(self, min_severity=Severity.WARNING):
            super().__init__()
            self.min_severity = min_severity

        def log(self, severity, msg):
            pass

    m.Logger = Logger

    class Tensor:
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, tuple(shape), dtype
            self.is_shape_tensor = False

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs: list[Tensor] = []
            self.outputs: list[Tensor] = []
            self.onnx_ops: list[str] = []
            self.initializer_types: list[int] = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

        def strongly_typed(self):
            flag = getattr(m.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
            return major >= 11 or (flag is not None and bool(self.flags & (1 << int(flag))))

    class ParserError:
        def __init__(self, code, desc, node, name, op):
            self._d = (code, desc, node, name, op)

        def code(self):
            return self._d[0]

        def desc(self):
            return self._d[1]

        def node(self):
            return self._d[2]

        def file(self):
            return "ModelImporter.cpp"

        def line(self):
            return 123

        def func(self):
            return "importNode"

    if node_names_in_errors:  # TensorRT 10 parsers name the node; older ones give only its index
        ParserError.node_name = lambda self: self._d[3]
        ParserError.node_operator = lambda self: self._d[4]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.logger = network, logger
            self.errors: list[ParserError] = []

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

        def parse_from_file(self, path):
            import onnx

            model = onnx.load(str(path), load_external_data=True)
            m.calls.append(("parse", str(path)))
            g = model.graph
            for k, n in enumerate(g.node):
                if n.op_type in m.unsupported_ops:
                    self.errors.append(ParserError(ErrorCode.UNSUPPORTED_NODE,
                                                   f"No importer registered for op: {n.op_type}", k, n.name,
                                                   n.op_type))
            if self.errors:
                return False
            inits = {t.name for t in g.initializer}

            def tensor(vi):
                tt = vi.type.tensor_type
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
                return Tensor(vi.name, dims, _ONNX_TO_DT.get(tt.elem_type, DataType.FLOAT))

            self.network.inputs = [tensor(i) for i in g.input if i.name not in inits]
            self.network.outputs = [tensor(o) for o in g.output]
            self.network.onnx_ops = [n.op_type for n in g.node]
            self.network.initializer_types = sorted({t.data_type for t in g.initializer})
            return True

    m.OnnxParser = OnnxParser

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, min, opt, max):  # TensorRT's parameter names
            if not (len(min) == len(opt) == len(max)) or any(not a <= b <= c for a, b, c in zip(min, opt, max, strict=True)):
                raise ValueError(f"fake tensorrt: bad profile for {name}: {min} {opt} {max}")
            self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    class TimingCache:
        def __init__(self, data: bytes):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+entry"

    class Config:
        def __init__(self):
            self.flags = {m.BuilderFlag.TF32}  # TensorRT enables TF32 by default
            self.pools = {}
            self.builder_optimization_level = 3
            self.hardware_compatibility_level = m.HardwareCompatibilityLevel.NONE
            self.profiles = []
            self.cache = None

        def set_flag(self, f):
            self.flags.add(f)

        def clear_flag(self, f):
            self.flags.discard(f)

        def get_flag(self, f):
            return f in self.flags

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def add_optimization_profile(self, p):
            self.profiles.append(p)
            return len(self.profiles) - 1

        def create_timing_cache(self, data):
            if bytes(data).startswith(b"corrupt"):
                return None
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            m.calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            flags = sorted(f.name for f in config.flags)
            if m.fail_build:
                self.logger.log(Severity.ERROR, m.fail_build)
                return None
            precision_flags = [f for f in ("FP16", "INT8") if f in flags]
            if network.strongly_typed() and precision_flags:  # what TensorRT refuses in strongly typed mode
                self.logger.log(Severity.ERROR, f"strongly typed networks take no {precision_flags[0]} flag")
                return None
            profile = config.profiles[0].shapes if config.profiles else {}
            dynamic = [t.name for t in network.inputs if -1 in t.shape]
            missing = [n for n in dynamic if n not in profile]
            if missing:
                self.logger.log(Severity.ERROR, f"no optimization profile shapes for {missing}")
                return None
            desc = {"version": version, "network_flags": network.flags, "strongly_typed": network.strongly_typed(),
                    "flags": flags, "pools": {int(k): v for k, v in config.pools.items()},
                    "opt_level": config.builder_optimization_level,
                    "hardware_compatibility": int(config.hardware_compatibility_level),
                    "profile": {k: [list(x) for x in v] for k, v in profile.items()},
                    "onnx_ops": network.onnx_ops, "initializer_types": network.initializer_types,
                    "inputs": [[t.name, list(t.shape), int(t.dtype)] for t in network.inputs],
                    "outputs": [[t.name, list(t.shape), int(t.dtype)] for t in network.outputs]}
            m.calls.append(("build", desc))
            head = bytearray(32)
            head[0:4] = b"ftrt"
            head[8] = 239
            parts = [int(x) for x in version.split(".")[:3]]
            head[24:27] = bytes(parts)
            return bytes(head) + MARK + json.dumps(desc).encode()

    m.Builder = Builder

    class Context:
        def set_input_shape(self, name, shape):
            raise RuntimeError("fake tensorrt: nothing runs here")

    class Engine:
        def __init__(self, desc):
            self.desc = desc
            self._io = [(n, s, dt, TensorIOMode.INPUT) for n, s, dt in desc["inputs"]] + \
                       [(n, s, dt, TensorIOMode.OUTPUT) for n, s, dt in desc["outputs"]]

        @property
        def num_io_tensors(self):
            return len(self._io)

        @property
        def num_layers(self):
            return len(self.desc["onnx_ops"])

        @property
        def num_optimization_profiles(self):
            return 1 if self.desc["profile"] else 0

        def _t(self, name):
            return next(t for t in self._io if t[0] == name)

        def get_tensor_name(self, i):
            return self._io[i][0]

        def get_tensor_dtype(self, name):
            return DataType(self._t(name)[2])

        def get_tensor_shape(self, name):
            return tuple(self._t(name)[1])

        def get_tensor_mode(self, name):
            return self._t(name)[3]

        def get_tensor_profile_shape(self, name, profile_index):
            return [tuple(x) for x in self.desc["profile"][name]]

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, plan):
            data = bytes(plan)
            at = data.find(MARK)
            if at < 0:
                return None
            desc = json.loads(data[at + len(MARK):])
            if desc["version"] != version:
                return None
            m.calls.append(("deserialize", len(data)))
            return Engine(desc)

    m.Runtime = Runtime
    return m


def built(m) -> dict:
    """The description of the last build the fake ``m`` was asked for."""
    return [d for what, d in m.calls if what == "build"][-1]


def read_plan(path: Path) -> dict:
    data = path.read_bytes()
    return json.loads(data[data.index(MARK) + len(MARK):])
