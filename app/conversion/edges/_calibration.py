"""Calibration inputs for static INT8 (ONNX QDQ, OpenVINO ``nncf.quantize``, TFLite full-integer):
the model's uploaded samples, a calibration set uploaded for it (``upload:<id>``,
``POST /v1/models/{id}/calibration-sets``), or generated inputs the model runs on (the runnable-input
search), one row per set. Every calibrated edge takes them from here, so the three runtimes are calibrated
on the same data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.sandbox.io import ConversionError

SETS = 32
Calibration = str
"""none | samples | synthetic | upload:<calibration set id> (checked by PATTERN where pydantic is)."""
PATTERN = r"^(none|samples|synthetic|upload:[0-9a-f]{32})$"
UPLOAD = "upload:"


def field(what: str):
    """The ``calibration`` option of an INT8-capable edge; ``what`` says what ``none`` means there."""
    from pydantic import Field  # here: the TF toolchain, which runs feeds(), has no pydantic

    return Field(default="none", pattern=PATTERN, description=f"int8: none = {what}; samples = static INT8 "
                 "calibrated on the model's uploaded samples; upload:<id> = on a calibration set uploaded for the "
                 "model (POST /v1/models/{id}/calibration-sets, an .npz); synthetic = static INT8 calibrated on "
                 "generated inputs the model runs on (a warning says accuracy may suffer)")


SYNTHETIC_WARNING = ("calibrated on synthetic inputs, not real data: activation ranges may not match what the model "
                     "sees in use, so int8 accuracy can be worse than the validation here shows; upload samples and "
                     "use calibration=samples")


def feeds(fmt: str, root: Path, primary: str, calibration: str, samples: str | None, *,
          sets: int = SETS, paths: list[str] | None = None) -> tuple[list[dict[str, Any]], str]:
    """Input sets (``{input name: array}``, batch 1) to calibrate ``fmt``'s model at ``root/primary``
    on, and a sentence saying where they came from."""
    import numpy as np

    from app.runners import open_runner, search
    from app.runners.inputs import default_inputs

    runner = open_runner(fmt, Path(root), paths or [primary], primary, precision="fp32")
    try:
        specs = runner.inputs()
        if calibration.startswith(UPLOAD):
            if not samples:
                raise ConversionError(f"calibration={calibration}: the calibration set was not given to the converter")
            arrays = _load(samples)
            missing = [s.name for s in specs if s.name not in arrays]
            if missing:
                raise ConversionError(f"the calibration set lacks inputs {', '.join(missing)}")
            n = min(len(arrays[s.name]) for s in specs)
            return ([{s.name: arrays[s.name][i:i + 1] for s in specs} for i in range(n)],
                    f"{n} row(s) of uploaded calibration set {calibration[len(UPLOAD):]}")
        if calibration == "samples":
            if not samples:
                raise ConversionError("calibration=samples needs the model's sample inputs: upload them first "
                                      "(PUT /v1/models/{id}/samples, an .npz)")
            with np.load(samples, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            missing = [s.name for s in specs if s.name not in arrays]
            if missing:
                raise ConversionError(f"the samples lack inputs {', '.join(missing)}")
            n = min(len(arrays[s.name]) for s in specs)
            # one row at a time: the batch dim may be fixed to 1, and calibration only needs the ranges
            return [{s.name: arrays[s.name][i:i + 1] for s in specs} for i in range(n)], f"{n} uploaded sample row(s)"
        plan = search.find(runner, specs, search.evidence(fmt, Path(root), primary))
        if not plan.found:
            raise ConversionError("calibration=synthetic: " + plan.failure(),
                                  hint="upload sample inputs and use calibration=samples")
        made = [default_inputs(specs, 1, seed, plan) for seed in range(sets)]
        return made, f"{sets} generated input set(s) ({'; '.join(plan.why) or 'the model’s own shapes'})"
    finally:
        runner.close()


def _load(path: str) -> dict[str, Any]:
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
