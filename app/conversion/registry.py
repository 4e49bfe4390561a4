"""Every conversion edge, declared once. The planner, the queue router, ``GET /v1/formats``
and the tests all read this list. Adding a conversion = one declaration here + one
implementation module under ``app/conversion/edges/``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from app.conversion.base import Edge, EdgeOptions, Precision
from app.conversion.edges._calibration import PATTERN as CALIBRATION_PATTERN
from app.conversion.edges._calibration import Calibration
from app.conversion.edges._calibration import field as calibration_field


class ToOnnxOptions(EdgeOptions):
    opset: int = Field(default=18, ge=7, le=23, description="ONNX opset of the default domain")


class TorchScriptToOnnxOptions(ToOnnxOptions):
    opset: int = Field(default=17, ge=7, le=20)


class NoOptions(EdgeOptions):
    pass


class ToSafeTensorsOptions(EdgeOptions):
    weights_key: str | None = Field(
        default=None, description="convert only this sub-dict of a checkpoint (e.g. 'model', 'state_dict'); "
        "default: every tensor, nested keys joined with '.'")


class CalibratedOptions(EdgeOptions):
    """An edge whose ``precision=int8`` can be calibrated (static INT8)."""

    @model_validator(mode="after")
    def _int8_only(self):
        if self.calibration != "none" and self.precision != "int8":
            raise ValueError(f"calibration={self.calibration} applies to precision=int8 only "
                             f"(precision is {self.precision})")
        return self


class ToOpenVINOOptions(CalibratedOptions):
    precision: Precision = Field(default="fp32", description="fp32: weights stay fp32; fp16: fp16 weights; "
                                 "int8: INT8 weight compression with NNCF (or, calibrated, nncf.quantize)")
    calibration: Calibration = calibration_field("data-free INT8 weight compression (nncf.compress_weights); "
                                                 "calibrated: nncf.quantize post-training quantisation")


class ToTfliteOptions(CalibratedOptions):
    precision: Precision = Field(default="fp32", description="fp32; fp16: float16 weights; int8: dynamic-range "
                                 "quantisation (int8 weights, float activations), or full-integer when calibrated")
    calibration: Calibration = calibration_field("dynamic-range quantisation; calibrated: full-integer (int8 "
                                                 "weights and activations, float inputs/outputs) from a "
                                                 "representative dataset")


class ToCoreMLOptions(EdgeOptions):
    precision: Precision = Field(default="fp32", description="fp32 or fp16 compute; int8: fp16 compute, int8 "
                                 "weights (linear quantisation)")
    palettize_bits: int | None = Field(default=None, ge=1, le=8, description="weights as a k-means lookup table "
                                       "of this many bits (coremltools.optimize palettization)")
    minimum_deployment_target: Literal["iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15"] = "iOS17"


class TfToCoreMLOptions(ToCoreMLOptions):
    max_dim: int = Field(default=1024, ge=1, le=1 << 20, description="the upper bound of every dimension the "
                         "signature leaves open (None): an ML Program needs one (RangeDim 1..max_dim, default 1)")


class TfToOnnxOptions(EdgeOptions):
    opset: int = Field(default=17, ge=13, le=21, description="ONNX opset tf2onnx writes")


class OnnxToOnnxOptions(CalibratedOptions):
    optimize: Literal["none", "basic", "extended"] = Field(
        default="basic", description="onnxruntime graph optimisation level; 'basic' stays portable")
    precision: Precision = Field(default="fp32", description="fp16: float16 weights and compute; "
                                 "int8: dynamic INT8 quantisation (onnxruntime)")
    keep_io_types: bool = Field(default=True, description="fp16: keep float32 inputs/outputs")
    per_channel: bool = Field(default=False, description="int8: per-channel weight quantisation")
    reduce_range: bool | None = Field(
        default=None, description="int8: 7-bit weights, which avoids int16 saturation in ONNX Runtime's u8s8 kernels "
        "on x86 CPUs without VNNI; default: on where this host lacks VNNI")
    calibration: Calibration = calibration_field("dynamic quantisation (weights int8, activations quantised at "
                                                 "run time)")
    keep_fp32: list[str] = Field(default_factory=list, max_length=10_000,
                                 description="fp16: node names kept in float32 (mixed precision), e.g. the ops "
                                             "a failed fp16 validation named as the first to diverge")


class ShapeRange(EdgeOptions):
    min: list[int] = Field(min_length=0, max_length=8)
    opt: list[int] = Field(min_length=0, max_length=8)
    max: list[int] = Field(min_length=0, max_length=8)

    @model_validator(mode="after")
    def _ordered(self):
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ValueError("min, opt and max must have the same rank")
        if any(not (1 <= a <= b <= c) for a, b, c in zip(self.min, self.opt, self.max, strict=True)):
            raise ValueError("each dim needs 1 <= min <= opt <= max")
        return self


class ToTensorRTOptions(EdgeOptions):
    precision: Precision = Field(
        default="fp32", description="fp32 (TF32 off unless tf32=true); fp16: fp16 kernels allowed (BuilderFlag.FP16; "
        "on TensorRT 11, which dropped the flag, the ONNX is made float16 first and built strongly typed); int8: "
        "explicit quantization: the ONNX is quantized to symmetric INT8 Q/DQ (onnxruntime quantize_static) calibrated "
        "as `calibration` says and built strongly typed; an ONNX that already has Q/DQ nodes is built as it is")
    calibration: Calibration = Field(
        default="none", pattern=CALIBRATION_PATTERN, description="int8: samples = calibrated on the model's uploaded "
        "samples; upload:<id> = on a calibration set uploaded for the model (POST /v1/models/{id}/calibration-sets); "
        "synthetic = on generated inputs the model runs on (a warning says accuracy may suffer); none = the ONNX must "
        "already be quantized (Q/DQ nodes)")
    per_channel: bool = Field(default=False, description="int8: per-channel weight scales")
    min_batch: int = Field(default=1, ge=1, le=4096, description="optimisation profile of a dynamic batch (dim 0)")
    opt_batch: int = Field(default=1, ge=1, le=4096, description="the batch TensorRT tunes its kernels for")
    max_batch: int = Field(default=32, ge=1, le=4096)
    shapes: dict[str, ShapeRange] = Field(
        default_factory=dict, max_length=64, description='explicit profile per input, like trtexec --minShapes/'
        '--optShapes/--maxShapes: {"x": {"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224], "max": [32, 3, 640, 640]}}; '
        "other dynamic dims get opt = the size the model was found to run on, min = opt/2, max = 2 x opt")
    workspace_mib: int | None = Field(default=None, ge=16, le=1 << 20, description="builder workspace limit "
                                      "(default: TensorRT's, the GPU's memory)")
    builder_optimization_level: int = Field(default=3, ge=0, le=5, description="0-5; TensorRT's default is 3")
    tf32: bool = Field(default=False, description="fp32: let TensorRT use TF32 (faster on Ampere+, ~1e-3 relative "
                       "error, which fails an fp32 validation)")
    hardware_compatibility: Literal["none", "ampere_plus"] = Field(
        default="none", description="ampere_plus: an engine that runs on any Ampere or later GPU (slower); none: "
        "only on the GPU model that built it")
    timing_cache: bool = Field(default=True, description="reuse and extend this host's timing cache "
                               "(MODELPORT_TENSORRT_CACHE_DIR) so rebuilds skip kernel timing")

    @model_validator(mode="after")
    def _consistent(self):
        if self.calibration != "none" and self.precision != "int8":
            raise ValueError(f"calibration={self.calibration} applies to precision=int8 only")
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError("min_batch <= opt_batch <= max_batch is needed")
        return self


EDGES: tuple[Edge, ...] = (
    Edge("torch_export", "onnx", "cpu", "main", ToOnnxOptions, "app.conversion.edges.torch_onnx:export_program",
         "fp32", requires=("torch", "onnx", "onnxscript"),
         description="torch.onnx.export(dynamo=True) of the ExportedProgram; dynamic dims kept; one self-contained file"),
    Edge("torchscript", "onnx", "cpu", "main", TorchScriptToOnnxOptions,
         "app.conversion.edges.torch_onnx:export_torchscript", "fp32", requires=("torch", "onnx"),
         needs_input_specs=True,
         description="TorchScript exporter (torch.onnx.export dynamo=False) with input_specs; dynamic axes from specs"),
    Edge("torch_export", "torchscript", "cpu", "main", NoOptions, "app.conversion.edges.torch_onnx:program_to_torchscript",
         "fp32", requires=("torch",),
         description="torch.jit.trace of ExportedProgram.module() at the exported shapes (TorchScript is deprecated)"),
    Edge("pytorch", "safetensors", "cpu", "main", ToSafeTensorsOptions, "app.conversion.edges.tensors:to_safetensors",
         "exact", requires=("torch", "safetensors"),
         description="torch.load(weights_only=True, map_location='cpu'); nested keys joined with '.'; lossless"),
    Edge("safetensors", "pytorch", "cpu", "main", NoOptions, "app.conversion.edges.tensors:to_pytorch",
         "exact", requires=("torch", "safetensors"),
         description="a torch.save zip state dict with the same keys and tensors"),
    Edge("onnx", "openvino", "intel", "main", ToOpenVINOOptions, "app.conversion.edges.openvino:from_onnx",
         "fp32", report_variants=("fp16", "int8"), requires=("openvino",),
         description="openvino.convert_model + save_model (compress_to_fp16 only when precision=fp16)"),
    Edge("torch_export", "openvino", "intel", "main", ToOpenVINOOptions, "app.conversion.edges.openvino:from_program",
         "fp32", report_variants=("fp16", "int8"), requires=("openvino", "torch"),
         description="openvino.convert_model of the ExportedProgram"),
    Edge("onnx", "tflite", "cpu", "tf", ToTfliteOptions, "app.conversion.edges.tflite:from_onnx",
         "fp32", requires=("onnx2tf", "tensorflow"),
         description="onnx2tf in the TF toolchain; inputs keep the source's layout (NCHW stays NCHW), dynamic "
                     "batch stays dynamic"),
    Edge("savedmodel", "tflite", "cpu", "tf", ToTfliteOptions, "app.conversion.edges.tflite:from_savedmodel",
         "fp32", requires=("tensorflow",),
         description="tf.lite.TFLiteConverter.from_saved_model of the serving signature; builtin ops only"),
    Edge("keras", "tflite", "cpu", "tf", ToTfliteOptions, "app.conversion.edges.tflite:from_keras",
         "fp32", requires=("tensorflow",),
         description="Keras 3 (.keras, safe_mode) via model.export, or tf_keras (.h5); builtin ops only; "
                     "models with Lambda bytecode refused"),
    Edge("torch_export", "coreml", "cpu", "main", ToCoreMLOptions, "app.conversion.edges.coreml:from_program",
         "fp32", requires=("coremltools", "torch"),
         description="coremltools.convert of the ExportedProgram (ML Program); fp16 / int8 weights / palettized; "
                     "prediction (validation, benchmarks) on the apple queue"),
    Edge("savedmodel", "coreml", "cpu", "coreml-tf", TfToCoreMLOptions, "app.conversion.edges.coreml_tf:from_savedmodel",
         "fp32", requires=("coremltools", "tensorflow"),
         description="coremltools' TensorFlow 2 frontend on the serving signature, in the coreml-tf toolchain "
                     "(TensorFlow 2.12, the newest coremltools supports); signature names kept, open dims as "
                     "RangeDims; fp16 / int8 weights / palettized; prediction on the apple queue"),
    Edge("keras", "savedmodel", "cpu", "tf", NoOptions, "app.conversion.edges.tf_export:keras_to_savedmodel",
         "fp32", requires=("tensorflow",),
         description="Keras 3 (.keras, safe_mode) via model.export, or tf_keras (.h5) via tf.saved_model.save; "
                     "Keras models reach Core ML through it; models with Lambda bytecode refused"),
    Edge("savedmodel", "onnx", "cpu", "tf", TfToOnnxOptions, "app.conversion.edges.tf_onnx:from_savedmodel",
         "fp32", requires=("tf2onnx", "tensorflow"),
         description="tf2onnx of the serving signature (tf.function), names from the signature, dynamic dims kept"),
    Edge("keras", "onnx", "cpu", "tf", TfToOnnxOptions, "app.conversion.edges.tf_onnx:from_keras",
         "fp32", requires=("tf2onnx", "tensorflow"),
         description="Keras 3 (.keras, safe_mode) via model.export then tf2onnx, or tf_keras (.h5) via "
                     "tf2onnx.convert.from_keras; models with Lambda bytecode refused"),
    Edge("tflite", "onnx", "cpu", "tf", TfToOnnxOptions, "app.conversion.edges.tf_onnx:from_tflite",
         "fp32", requires=("tf2onnx", "tensorflow"),
         description="tf2onnx's TFLite frontend"),
    Edge("onnx", "tensorrt", "gpu", "main", ToTensorRTOptions, "app.conversion.edges.tensorrt:from_onnx",
         "fp32", report_variants=("fp16",), requires=("tensorrt", "onnx", "onnxruntime"),
         description="TensorRT ONNX parser + builder on the GPU that will run it: optimisation profile from the dynamic "
                     "dims, fp16, INT8 by explicit Q/DQ quantization, timing cache; the engine records its GPU, compute "
                     "capability and TensorRT version (model.engine.json)"),
    Edge("onnx", "onnx", "cpu", "main", OnnxToOnnxOptions, "app.conversion.edges.onnx_opt:transform",
         "fp32", report_variants=("fp16", "int8"), requires=("onnx", "onnxruntime"), variant="transform",
         description="graph optimisation, fp16 or dynamic INT8 quantisation with onnxruntime's tools"),
)


def edges() -> tuple[Edge, ...]:
    return EDGES


def by_name(name: str) -> Edge:
    for e in EDGES:
        if e.name == name:
            return e
    raise KeyError(name)


def tolerance(edge: Edge, options: dict) -> str:
    precision = options.get("precision")
    return precision if precision in ("fp16", "int8") else edge.tolerance
