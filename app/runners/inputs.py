"""The one input generator and the one rule for dynamic dimensions, shared by validation, the
benchmark and the serving probe.

A dimension is dynamic when it is unknown (``None``), symbolic (a name) or negative (``-1``, as
TFLite and OpenVINO write it); ``0`` is a real, empty dimension. A dynamic dim 0 is the batch;
other dynamic dims take the sizes a runnable-input search found (:mod:`app.runners.search`), else
``OTHER_DIM``. Generated values: floats standard
normal, integers in ``INT_RANGE`` (uint8 over its whole range), bools random."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from app.runners.base import IOSpec

if TYPE_CHECKING:
    from app.runners.search import Plan

INT_RANGE = (0, 16)  # integer inputs (token ids, indices): small, valid for any vocabulary/table
OTHER_DIM = 16  # size of dynamic dims other than each input's first one (the batch)


def is_dynamic(d: Any) -> bool:
    return d is None or isinstance(d, str) or (isinstance(d, int) and d < 0)


def np_dtype(name: Any) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        if isinstance(name, str) and (name.startswith("bfloat") or name.startswith("float8")):
            import ml_dtypes  # noqa: F401 - registers bfloat16 / float8 with numpy

            return np.dtype(name)
        raise


def _is_float(dt: np.dtype) -> bool:
    return dt.kind == "f" or (dt.kind == "V" and (dt.name.startswith("bfloat") or dt.name.startswith("float")))


def _is_exact_kind(dt: np.dtype) -> bool:
    return dt.kind in "iub"


# ------------------------------------------------------------------------------ make_inputs


def dim_key(spec_idx: int, dim_idx: int, d: Any) -> str:
    """One key per dynamic dim: its symbol (shared across inputs), else its position."""
    return d if isinstance(d, str) and d else f"#{spec_idx}.{dim_idx}"


def random_array(rng: np.random.Generator, dt: np.dtype, shape: tuple[int, ...], name: str) -> np.ndarray:
    if _is_float(dt):
        return np.asarray(rng.standard_normal(shape)).astype(dt)
    if dt.kind == "b":
        return np.asarray(rng.random(shape) < 0.5)
    if dt.kind in "iu":
        hi = 256 if dt == np.uint8 else INT_RANGE[1]
        return np.asarray(rng.integers(INT_RANGE[0], hi, size=shape)).astype(dt)
    raise ValueError(f"input {name!r}: cannot make values of dtype {dt.name}")


def check_sample(spec: IOSpec, shape: tuple[int, ...], dtype: np.dtype, what: str = "sample") -> np.dtype | None:
    """Whether a sample of ``shape`` and ``dtype`` can feed ``spec`` (ValueError saying why not, and
    calling it ``what``): the rank and every fixed dim must match, the dtype be the same kind or
    castable without loss of meaning. The dtype to cast it to, or None when the spec says nothing to
    check against."""
    if spec.shape is None or not spec.dtype:
        return None
    dt = np_dtype(spec.dtype)
    if len(shape) != len(spec.shape):
        raise ValueError(f"{what} {spec.name!r} has shape {list(shape)}; the model expects rank "
                         f"{len(spec.shape)} {spec.shape}")
    bad = [i for i, (s, d) in enumerate(zip(shape, spec.shape, strict=True))
           if not is_dynamic(d) and s != d]
    if bad:
        raise ValueError(f"{what} {spec.name!r} has shape {list(shape)}; the model expects {spec.shape}")
    if dtype != dt:
        ok = (_is_float(dt) and (_is_float(dtype) or dtype.kind in "iu")) or \
             (dt.kind in "iu" and dtype.kind in "iu") or (dt.kind == "b" and dtype.kind == "b")
        if not ok:
            raise ValueError(f"{what} {spec.name!r} has dtype {dtype.name}; the model expects {dt.name}")
    return dt


def _check_sample(spec: IOSpec, value: Any) -> np.ndarray:
    a = np.asarray(value)
    dt = check_sample(spec, a.shape, a.dtype)
    return a if dt is None or a.dtype == dt else a.astype(dt)


def make_inputs(specs: list[IOSpec], *, seed: int = 0, samples: dict[str, np.ndarray] | None = None,
                dim_values: tuple = (1, 3), other_dim: int = OTHER_DIM,
                plan: Plan | None = None) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Labelled input sets for ``specs``.

    A dynamic dim 0 (the batch) takes each of ``dim_values`` in turn — one set per value, so a
    batch-specialised export is caught; other dynamic dims get the ``plan``'s size (a runnable-input
    search), else ``other_dim``. A symbolic name gets one size across all inputs. Floats are
    standard normal, integers in the plan's range or ``[0, 16)`` (uint8 ``[0, 255]``), masks the
    plan's fill, bools random. ``samples`` (e.g. a user's .npz) come first as set ``"samples"``."""
    from app.runners.search import make_array

    rng = np.random.default_rng(seed)
    sets: list[tuple[str, dict[str, np.ndarray]]] = []
    if samples is not None:
        names = [s.name for s in specs]
        missing = [n for n in names if n not in samples]
        extra = sorted(set(samples) - set(names))
        if missing or extra:
            parts = ([f"missing input(s) {missing}"] if missing else []) + \
                    ([f"unknown name(s) {extra}"] if extra else [])
            raise ValueError(f"samples do not match the model's inputs {names}: " + "; ".join(parts))
        sets.append(("samples", {s.name: _check_sample(s, samples[s.name]) for s in specs}))

    unknown = [s.name for s in specs if s.shape is None or not s.dtype]
    if unknown and sets:
        return sets  # only the user's samples can feed inputs of unknown rank/dtype
    if unknown:
        raise ValueError(f"cannot make values for input(s) {unknown}: dtype or rank unknown (pass samples)")
    # which dims vary across sets: each input's dynamic dim 0 (and every dim sharing its name)
    varying: dict[str, str] = {}  # key -> label name
    for i, s in enumerate(specs):
        if s.shape and is_dynamic(s.shape[0]):
            d = s.shape[0]
            varying.setdefault(dim_key(i, 0, d), d if isinstance(d, str) and d else "batch")
    sizes = plan.sizes if plan is not None else {}
    values = list(dict.fromkeys(int(v) for v in dim_values)) if varying else [None]
    if any(v is not None and v < 0 for v in values):
        raise ValueError(f"dim_values must be >= 0, got {dim_values}")
    for v in values:
        feeds: dict[str, np.ndarray] = {}
        for i, s in enumerate(specs):
            shape = []
            for j, d in enumerate(s.shape):
                if not is_dynamic(d):
                    shape.append(int(d))
                else:
                    key = dim_key(i, j, d)
                    shape.append(v if key in varying else int(sizes.get(key, other_dim)))
            feeds[s.name] = make_array(rng, s, tuple(shape), plan)
        label = "static" if v is None else ",".join(f"{n}={v}" for n in dict.fromkeys(varying.values()))
        sets.append((label, feeds))
    return sets


def fixed_batch(specs: list[IOSpec]) -> int | None:
    """The batch a model is pinned to: dim 0 of its inputs when no input has a dynamic dim 0
    (``None`` when batch is free, or the model has no batched input)."""
    ranked = [s for s in specs if len(s.shape) >= 1]
    if not ranked or any(is_dynamic(s.shape[0]) for s in ranked):
        return None
    return int(ranked[0].shape[0])


def input_shape(spec: IOSpec, batch_size: int, *, index: int = 0, plan: Plan | None = None) -> list[int]:
    """Concrete shape for one input (the ``index``-th): a dynamic dim 0 is the batch, other dynamic
    dims the plan's size, else 16.

    Only a dynamic dim 0 stands for the batch: in ``[1, "seq"]`` the batch is pinned at 1 and
    ``seq`` is not the batch, so it gets 16 like any other dynamic dim."""
    sizes = plan.sizes if plan is not None else {}
    return [int(d) if not is_dynamic(d) else batch_size if i == 0 else int(sizes.get(dim_key(index, i, d), OTHER_DIM))
            for i, d in enumerate(spec.shape)]


def default_inputs(specs: list[IOSpec], batch_size: int, seed: int = 0, plan: Plan | None = None) -> dict[str, np.ndarray]:
    """Random feeds for one batch size, values as :func:`make_inputs` makes them."""
    from app.runners.search import make_array

    rng = np.random.default_rng([seed, batch_size])
    feeds = {}
    for i, spec in enumerate(specs):
        try:
            np_dtype(spec.dtype)
        except TypeError as e:
            raise ValueError(f"input {spec.name!r}: can't generate dtype {spec.dtype!r}; pass inputs_for") from e
        arr = make_array(rng, spec, tuple(input_shape(spec, batch_size, index=i, plan=plan)), plan)
        feeds[spec.name] = np.asarray(arr, order="C")  # (ascontiguousarray makes 0-d 1-d)
    return feeds
