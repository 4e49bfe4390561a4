"""Every conversion edge, declared once. The planner, the queue router, ``GET /v1/formats``
and the tests all read this list. Adding a conversion = one declaration here + one
implementation module under ``app/conversion/edges/``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from app.conversion.base import Edge, EdgeOptions, Precision
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
