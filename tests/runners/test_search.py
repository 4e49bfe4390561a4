"""The runnable-input search on generated graphs with each trap: the default inputs (16x16, ids in
[0, 16), 16 samples) crash or NaN the model; the search finds inputs it runs on, says why, and
validation then reaches a real verdict instead of "skipped"."""

from __future__ import annotations

import numpy as np
import pytest

from app.pipeline.validation import validate
from app.runners import open_runner, search
from app.runners.inputs import default_inputs
from tests import traps


def _onnx(path):
    return open_runner("onnx", path.parent, [path.name], path.name)


def _plan(path):
    r = _onnx(path)
    return r, search.find(r, r.inputs(), search.evidence("onnx", path.parent, path.name))


def test_stride32_detector_gets_a_multiple_of_32(tmp_path):
    path = traps.stride32_detector(tmp_path / "det.onnx")
    r = _onnx(path)
    with pytest.raises(Exception, match="(?i)broadcast|shape|dimension"):
        r.run(default_inputs(r.inputs(), 1))  # the defaults: 16x16 -> the levels don't line up
    ev = search.evidence("onnx", tmp_path, "det.onnx")
    assert (ev.multiple, ev.stride_ops) == (32, 5)
    r, plan = _plan(path)
    assert plan.found and plan.sizes == {"height": 224, "width": 224}
    assert any("height=224: multiple of 32 from 5 stride>1" in w for w in plan.why), plan.why
    assert plan.tried == [{"label": "height=224, width=224", "error": None}]
    out = r.run(default_inputs(r.inputs(), 3, plan=plan))
    assert out["score"].shape == (3, 8) and np.isfinite(out["score"]).all()


def test_embedding_tables_bound_the_ids_and_masks_are_ones(tmp_path):
    path = traps.embedding_bound(tmp_path / "emb.onnx")
    r, plan = _plan(path)
    assert plan.found
    assert plan.int_ranges == {"input_ids": (0, 30), "token_type_ids": (0, 2)}
    assert plan.fills == {"attention_mask": 1}
    assert any("'token_type_embeddings' has 2 rows" in w for w in plan.why), plan.why
    feeds = default_inputs(r.inputs(), 2, plan=plan)
    assert feeds["token_type_ids"].max() <= 1 and feeds["input_ids"].max() < 30
    assert (feeds["attention_mask"] == 1).all() and feeds["input_ids"].shape == (2, 16)


def test_audio_gets_a_second_of_samples(tmp_path):
    path = traps.min_length_audio(tmp_path / "audio.onnx")
    r = _onnx(path)
    with pytest.raises(Exception):  # noqa: B017 - ORT's own error type: 16 samples can't be framed into 8000
        r.run(default_inputs(r.inputs(), 1))
    r, plan = _plan(path)
    assert plan.found and plan.sizes == {"samples": 16000}
    assert plan.why[0].startswith("samples=16000: ") and "audio size" in plan.why[0], plan.why
    assert "a Slice that keeps the first 8000" in plan.why[0]


@pytest.mark.parametrize(("make", "size", "why"), [
    (traps.reflect_pad_signal, {"n": 41}, "n=41: at least 41 samples: a reflect Pad of 40"),
    (traps.stft_frames, {"length": 400}, "length=400: at least 400 samples: an STFT frame of 400 samples"),
])
def test_pads_and_stft_frames_set_a_minimum_length(make, size, why, tmp_path):
    path = make(tmp_path / "m.onnx")
    r = _onnx(path)
    with pytest.raises(Exception):  # noqa: B017 - ORT's own error: the default 16 is too short
        r.run(default_inputs(r.inputs(), 1))
    r, plan = _plan(path)
    assert plan.found and plan.sizes == size and len(plan.tried) == 1
    assert plan.why[0].startswith(why), plan.why
    ev = search.evidence("onnx", tmp_path, "m.onnx")
    assert ev.min_length and ev.to_dict()["min_length"]


def test_torch_export_ranges_bound_the_sizes(tmp_path):
    """A program exported with ``Dim(min=320)`` refuses anything shorter (it frames the first 300):
    the range read from the archive, not guessed, gives the size."""
    import torch

    class Pool(torch.nn.Module):
        def forward(self, x):
            return x[..., :300].reshape(x.shape[0], 3, 30, 10).mean(-1)

    seq = torch.export.Dim("seq", min=320, max=4096)
    ep = torch.export.export(Pool(), (torch.randn(2, 3, 600),),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch"), 2: seq}})
    torch.export.save(ep, tmp_path / "pool.pt2")
    ev = search.evidence("torch_export", tmp_path, "pool.pt2")
    ((sym, (lo, hi, why)),) = [(k, v) for k, v in ev.dim_ranges.items() if v[0]]
    assert (lo, hi) == (320, 4096) and why == "torch.export range [320, 4096]"
    r = open_runner("torch_export", tmp_path, ["pool.pt2"], "pool.pt2")
    with pytest.raises(Exception):  # noqa: B017 - the program's own guard: 16 < 320
        r.run(default_inputs(r.inputs(), 1))
    plan = search.find(r, r.inputs(), ev)
    assert plan.found and plan.sizes == {sym: 320} and len(plan.tried) == 1
    assert "torch.export range [320, 4096]" in plan.why[0]


def test_ids_that_nan_the_model_are_narrowed(tmp_path):
    path = traps.nan_on_large_ids(tmp_path / "nan.onnx")
    r, plan = _plan(path)
    assert plan.found and plan.int_ranges == {"flags": (0, 2)}
    assert plan.tried[0]["error"] == "output 'y' has NaN/Inf" and plan.tried[1]["error"] is None
    assert np.isfinite(r.run(default_inputs(r.inputs(), 1, plan=plan))["y"]).all()


def test_a_model_that_runs_on_nothing_tried_says_what_was_tried(tmp_path):
    path = traps.runs_nowhere(tmp_path / "no.onnx")
    r, plan = _plan(path)
    assert not plan.found and len(plan.tried) == len(search.LADDERS["other"])
    assert plan.failure().startswith(f"the uploaded model ran on none of the {len(plan.tried)} generated input(s) tried")
    rep = validate(r, _onnx(path), profile="fp32")
    assert rep["status"] == "skipped" and "ran on none of the" in rep["reason"] and "upload sample inputs" in rep["reason"]


@pytest.mark.parametrize("make", [traps.stride32_detector, traps.embedding_bound, traps.min_length_audio,
                                  traps.nan_on_large_ids, traps.reflect_pad_signal, traps.stft_frames])
def test_validation_reaches_a_verdict_on_every_trap(make, tmp_path):
    """Before the search each of these was "skipped — upload samples" (the reference crashed or
    NaN'd on every generated set); now the same model against itself passes, and a tampered
    candidate fails: the verdict is real."""
    path = make(tmp_path / "m.onnx")
    rep = validate(_onnx(path), _onnx(path), profile="fp32")
    assert rep["status"] == "passed", rep["reason"]
    assert rep["inputs"]["found"] and {s["label"] for s in rep["input_sets"]} == {"batch=1", "batch=3"}
    assert any(n.startswith("generated inputs: ") for n in rep["notes"]) or not rep["inputs"]["why"]

    class Off:  # the same model, one output nudged by 1%: must fail
        def __init__(self, r):
            self.r, self.info = r, r.info

        def inputs(self):
            return self.r.inputs()

        def outputs(self):
            return self.r.outputs()

        def run(self, feeds):
            return {k: v * 1.01 + 0.01 for k, v in self.r.run(feeds).items()}

    assert validate(_onnx(path), Off(_onnx(path)), profile="fp32")["status"] == "failed"


def test_without_the_search_the_traps_are_skipped(tmp_path):
    """The baseline the search replaces: the old defaults skip the detector."""
    path = traps.stride32_detector(tmp_path / "det.onnx")
    rep = validate(_onnx(path), _onnx(path), profile="fp32", search=False)
    assert rep["status"] == "skipped" and "cannot run on generated inputs" in rep["reason"]


def test_torchscript_forward_graphs_give_shapes_channels_and_id_ranges(tmp_path):
    """A scripted CNN's first conv says 3 channels and rank 4, an embedding's table bounds the ids and
    the mask multiplied into it is shaped like them; each found set runs (scripted and traced alike)."""
    import torch
    from torch import nn

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
            self.fc = nn.Linear(8, 4)

        def forward(self, image):
            return self.fc(self.body(image).flatten(1))

    class Text(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.out = nn.Embedding(100, 16), nn.Linear(16, 2)

        def forward(self, ids, mask):
            return self.out(self.emb(ids) * mask.unsqueeze(-1))

    cases = [(CNN(), ["image"], (torch.randn(1, 3, 32, 32),),
              {"image": {"shape": [1, 3, 224, 224], "dtype": "float32", "dynamic": {"0": "batch"}}},
              "weight [8, 3, 3, 3]: 3 channel(s), rank 4"),
             (Text(), ["ids", "mask"], (torch.randint(0, 100, (1, 5)), torch.ones(1, 5)),
              {"ids": {"shape": [1, 16], "dtype": "int64", "dynamic": {"0": "batch"}},
               "mask": {"shape": [1, 16], "dtype": "float32", "dynamic": {"0": "batch"}}},
              "aten::embedding table [100, 16]: ids < 100")]
    for model, names, example, want, why in cases:
        for make in (torch.jit.script, lambda m, ex=example: torch.jit.trace(m, ex)):
            torch.jit.save(make(model), tmp_path / "m.pt")
            specs, reasons, tried = search.torchscript_specs(torch.jit.load(tmp_path / "m.pt"), names)
            assert specs == want and tried == [], (specs, tried)
            assert any(why in r for r in reasons), reasons
