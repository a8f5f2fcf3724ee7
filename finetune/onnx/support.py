"""Which of a model's operators the library converts, at which schema version, and whether
gradients flow through them: what ``finetune inspect`` prints before anything is imported."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import onnx

from .load import all_nodes
from .registry import _load_converters, lookup, since_version


@dataclass(frozen=True)
class OpSupport:
    """One operator of a model: how many nodes use it (subgraphs included), the model's opset
    for its domain, the schema version that opset selects, and what the library does with it."""

    domain: str
    op_type: str
    nodes: int
    opset: int | None
    schema: int | None
    supported: bool
    differentiable: bool

    @property
    def name(self) -> str:
        return self.op_type if self.domain in ("", "ai.onnx") else f"{self.domain}.{self.op_type}"


def op_support(model: onnx.ModelProto) -> list[OpSupport]:
    """Every operator ``model`` uses, sorted by name."""
    _load_converters()
    opsets = {
        ("" if o.domain == "ai.onnx" else o.domain): int(o.version) for o in model.opset_import
    }
    counts = Counter(
        ("" if n.domain == "ai.onnx" else n.domain, n.op_type) for n in all_nodes(model.graph)
    )
    rows = []
    for (domain, op), n in counts.items():
        opset = opsets.get(domain)
        schema = since_version(op, opset, domain) if opset is not None else None
        converter = lookup(op, opset, domain) if opset is not None else None
        rows.append(
            OpSupport(
                domain,
                op,
                n,
                opset,
                schema,
                converter is not None,
                converter is not None and converter.differentiable,
            )
        )
    return sorted(rows, key=lambda r: r.name.lower())


def format_support(rows: list[OpSupport]) -> list[str]:
    """``rows`` as an aligned table: op, nodes, schema version, supported, gradient."""
    width = max([len(r.name) for r in rows] + [2])
    lines = [f"  {'op':<{width}}  nodes  schema  supported  gradient"]
    for r in rows:
        schema = "-" if r.schema is None else str(r.schema)
        supported = "yes" if r.supported else "NO"
        gradient = ("yes" if r.differentiable else "no") if r.supported else "-"
        lines.append(f"  {r.name:<{width}}  {r.nodes:>5}  {schema:>6}  {supported:<9}  {gradient}")
    return lines
