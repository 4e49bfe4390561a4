"""Route planning over the declared edges: the fewest steps from a source format to a target,
preferring edges whose queue has a live worker, with options checked against the route."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from app.conversion import registry
from app.conversion.base import Edge
from app.errors import Unprocessable


class PlanError(Unprocessable):
    code = "no_route"


@dataclass
class Plan:
    source: str
    target: str
    edges: list[Edge]
    options: list[dict[str, Any]] = field(default_factory=list)  # validated, defaults filled, per edge

    def to_dict(self, live_queues: set[str] | None = None) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "steps": [
                {"edge": e.name, "source": e.source, "target": e.target, "hardware": e.hardware,
                 "toolchain": e.toolchain, "queue": e.queue, "options": o,
                 "tolerance": registry.tolerance(e, o),
                 **({"worker_available": e.queue in live_queues} if live_queues is not None else {})}
                for e, o in zip(self.edges, self.options or [{}] * len(self.edges), strict=True)
            ],
        }


def targets() -> set[str]:
    return {e.target for e in registry.edges()}


def _route(source: str, target: str, preferred: set[str] | None) -> list[Edge] | None:
    """Breadth-first: fewest edges; among equal lengths, the one using more available queues."""
    best: list[Edge] | None = None
    queue: deque[tuple[str, list[Edge]]] = deque([(source, [])])
    seen_depth: dict[str, int] = {source: 0}
    while queue:
        node, path = queue.popleft()
        if best is not None and len(path) >= len(best):
            continue
        for e in registry.edges():
            if e.source != node or e.source == e.target:
                continue
            new = [*path, e]
            if e.target == target:
                if best is None or len(new) < len(best) or (
                    preferred is not None and len(new) == len(best) and _score(new, preferred) > _score(best, preferred)
                ):
                    best = new
                continue
            if seen_depth.get(e.target, 1 << 30) >= len(new):
                seen_depth[e.target] = len(new)
                queue.append((e.target, new))
    return best


def _score(path: list[Edge], preferred: set[str]) -> int:
    return sum(e.queue in preferred for e in path)


def _self_edge(fmt: str) -> Edge | None:
    return next((e for e in registry.edges() if e.source == fmt and e.target == fmt), None)


def plan(source: str, target: str, options: dict[str, Any] | None = None,
         live_queues: set[str] | None = None) -> Plan:
    options = dict(options or {})
    known = targets()
    if target not in known:
        raise Unprocessable(f"unknown target format '{target}'; convertible targets: {', '.join(sorted(known))}",
                            code="unknown_target", detail={"targets": sorted(known)})
    if source == target:
        self_edge = _self_edge(source)
        if self_edge is None:
            raise PlanError(f"the model is already {target}, and there is no {target}->{target} transformation")
        edges = [self_edge]
    else:
        edges = _route(source, target, live_queues)
        if edges is None:
            reachable = sorted({t for t in known if t != source and _route(source, t, None)})
            raise PlanError(f"no conversion route from {source} to {target}; from {source} modelport can reach: "
                            f"{', '.join(reachable) or 'nothing'}", detail={"source": source, "target": target,
                                                                            "reachable": reachable})
        # options only the target's own transformation understands (e.g. ONNX fp16) add that step
        fields = set().union(*(e.options.model_fields for e in edges))
        tail = _self_edge(target)
        if tail is not None and any(k not in fields and k in tail.options.model_fields for k in options):
            edges = [*edges, tail]
    return Plan(source, target, edges, _validate(edges, options))


def _validate(edges: list[Edge], options: dict[str, Any]) -> list[dict[str, Any]]:
    allowed = sorted(set().union(*(e.options.model_fields for e in edges)))
    unknown = sorted(k for k in options if k not in allowed)
    if unknown:
        raise Unprocessable(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)} for this "
            f"conversion; allowed: {', '.join(allowed) or 'none'}",
            code="invalid_options", detail={"unknown": unknown, "allowed": allowed})
    out = []
    for e in edges:
        mine = {k: v for k, v in options.items() if k in e.options.model_fields}
        try:
            out.append(e.options(**mine).model_dump())
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise Unprocessable(f"option '{where}': {first['msg']}", code="invalid_options",
                                detail={"errors": [{"option": ".".join(str(x) for x in x_["loc"]), "msg": x_["msg"]}
                                                   for x_ in err.errors()], "allowed": allowed}) from None
    return out
