"""TensorRT readiness of an ONNX graph, checked WITHOUT TensorRT.

A graph is "ready" when

1. every node is a default-domain ONNX op that the TensorRT 10 ONNX parser supports
   (:data:`TRT10_SUPPORTED_OPS`) and that is not data-dependent (:data:`READY_OPS`),
2. every graph input and output has a static shape except axis 0 (the batch),
3. int64 index inputs are declared within int32 range (the export writes the largest
   index, L - 1, as ``lmae.index_max`` in ``metadata_props``) and every int64
   initializer / Constant fits in int32 (Slice start/end sentinels such as INT64_MAX
   are clamped by TensorRT and only noted),
4. ``polygraphy check lint`` is clean, when polygraphy (and onnx_graphsurgeon) is
   installed; otherwise the lint is reported as skipped.

Source of the op list: onnx/onnx-tensorrt, ``docs/operators.md`` ("Supported ONNX
Operators", operator support matrix).  The base set is every row marked ``Y`` in that
file as of the TensorRT 8.5 revision (commit 6d0ab7be324d02c7feb3a306b6fdbeae84f71ddc),
plus the rows the release/10.x branch of the same file marks ``Y`` that were ``N`` or
absent there (LayerNormalization, GroupNormalization, Gelu, Hardmax, IsInf,
Blackman/Hann/HammingWindow).  Ops marked ``N`` (Unique, StringNormalizer, Sequence*,
Optional*, QLinear*, ...) are not in the set; neither is any non-default domain.

Ready is stricter than "the parser imports it": the graphs promise static gathers with
host-computed indices (DESIGN: no data-dependent shape), so data-dependent ops
(:data:`DATA_DEPENDENT_OPS`: output shapes set by values, control flow, index-driven
scatter, top-k selection) make a graph not ready even where the parser supports them.
:data:`READY_OPS` is the parser's list without them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import onnx
from onnx import numpy_helper

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

TRT10_SUPPORTED_OPS: frozenset[str] = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
Cast Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GRU HardSwish HardSigmoid Identity If ImageScaler InstanceNormalization IsNaN LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus
Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal
ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze
Upsample Where Xor
LayerNormalization GroupNormalization Gelu Hardmax IsInf BlackmanWindow HannWindow HammingWindow
""".split())
# data-dependent ops: NonZero / NonMaxSuppression (output shape from values), TopK
# (selection the host does for these graphs), Loop / If / Scan (control flow), ScatterND
# (writes at data-given indices)
DATA_DEPENDENT_OPS: frozenset[str] = frozenset("NonZero NonMaxSuppression TopK Loop If Scan ScatterND".split())
READY_OPS: frozenset[str] = TRT10_SUPPORTED_OPS - DATA_DEPENDENT_OPS
TRT_OPS_SOURCE = ("onnx/onnx-tensorrt docs/operators.md (operator support matrix; TensorRT 8.5 revision "
                  "6d0ab7be + release/10.x additions)")
INDEX_DTYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)


@dataclass
class ReadinessReport:
    path: str | None
    ops: list[str] = field(default_factory=list)
    unsupported_ops: list[str] = field(default_factory=list)
    data_dependent_ops: list[str] = field(default_factory=list)
    dynamic_dims: list[str] = field(default_factory=list)
    int64_problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lint: str = "skipped"  # "clean" | "failed: ..." | "skipped: ..."

    @property
    def problems(self) -> list[str]:
        out = [f"op {o} is not supported by the TensorRT 10 ONNX parser" for o in self.unsupported_ops]
        out += [f"op {o} is data-dependent (the graphs promise static shapes and host-computed indices)"
                for o in self.data_dependent_ops]
        out += [f"dynamic non-batch dimension: {d}" for d in self.dynamic_dims]
        out += self.int64_problems
        if self.lint.startswith("failed"):
            out.append(f"polygraphy lint {self.lint}")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "ops": self.ops, "problems": self.problems, "notes": self.notes, "lint": self.lint}

    def __str__(self) -> str:
        head = f"{self.path or '<model>'}: TensorRT-ready" if self.ok else f"{self.path or '<model>'}: NOT TensorRT-ready"
        lines = [head] + [f"  - {p}" for p in self.problems] + [f"  (note) {n}" for n in self.notes]
        lines.append(f"  lint: {self.lint}")
        return "\n".join(lines)


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_nodes(g)


def _dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return [None]
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _slice_bound_inputs(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for n in _all_nodes(graph):
        if n.op_type == "Slice":
            names.update(n.input[1:3])
    return names


def check_ops(proto: onnx.ModelProto) -> tuple[list[str], list[str], list[str]]:
    """(ops, ops the TensorRT 10 parser does not support, data-dependent ops)."""
    ops, bad, dynamic = set(), set(), set()
    for n in _all_nodes(proto.graph):
        name = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        ops.add(name)
        if n.domain not in ("", "ai.onnx") or n.op_type not in TRT10_SUPPORTED_OPS:
            bad.add(name)
        elif n.op_type in DATA_DEPENDENT_OPS:
            dynamic.add(name)
    return sorted(ops), sorted(bad), sorted(dynamic)


def check_shapes(proto: onnx.ModelProto) -> list[str]:
    out = []
    for kind, vis in (("input", proto.graph.input), ("output", proto.graph.output)):
        inits = {i.name for i in proto.graph.initializer}
        for vi in vis:
            if vi.name in inits:
                continue
            dims = _dims(vi)
            if dims == [None]:
                out.append(f"{kind} {vi.name}: no declared shape")
                continue
            for ax, d in enumerate(dims):
                if ax == 0:
                    continue
                if not isinstance(d, int) or d <= 0:
                    out.append(f"{kind} {vi.name} axis {ax} = {d!r} (only axis 0 may be dynamic)")
    return out


def check_int64(proto: onnx.ModelProto) -> tuple[list[str], list[str]]:
    problems, notes = [], []
    meta = {p.key: p.value for p in proto.metadata_props}
    index_inputs = [vi for vi in proto.graph.input
                    if vi.type.tensor_type.elem_type in INDEX_DTYPES]
    if index_inputs:
        if "lmae.index_max" not in meta:
            problems.append(f"integer inputs {[v.name for v in index_inputs]} have no declared range "
                            f"(metadata lmae.index_max)")
        else:
            try:
                top = int(meta["lmae.index_max"])
            except ValueError:
                top = INT32_MAX + 1
            if not 0 <= top <= INT32_MAX:
                problems.append(f"declared index range [0, {meta['lmae.index_max']}] exceeds int32")
    slice_bounds = _slice_bound_inputs(proto.graph)
    tensors = [(t.name, t) for t in proto.graph.initializer]
    for n in _all_nodes(proto.graph):
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    tensors.append((n.output[0], a.t))
    for name, t in tensors:
        if t.data_type != onnx.TensorProto.INT64:
            continue
        arr = numpy_helper.to_array(t)
        if arr.size == 0:
            continue
        lo, hi = int(arr.min()), int(arr.max())
        if lo < INT32_MIN or hi > INT32_MAX:
            if name in slice_bounds:
                notes.append(f"int64 Slice bound {name} = [{lo}, {hi}] is clamped to int32 by TensorRT")
            else:
                problems.append(f"int64 constant {name} holds [{lo}, {hi}], outside int32")
    return problems, notes


def run_lint(path: str | os.PathLike, timeout: float = 300) -> str:
    """``polygraphy check lint``; 'skipped: ...' when polygraphy is not installed."""
    exe = shutil.which("polygraphy") or str(Path(sys.executable).parent / "polygraphy")
    try:
        import polygraphy  # noqa: F401
        import onnx_graphsurgeon  # noqa: F401
    except ImportError as e:
        return f"skipped: {e.name} not installed (pip install polygraphy onnx-graphsurgeon)"
    if not Path(exe).exists():
        return "skipped: polygraphy command not found"
    with tempfile.TemporaryDirectory() as td:
        rep = Path(td) / "lint.json"
        env = {**os.environ, "POLYGRAPHY_AUTOINSTALL_DEPS": "0", "OMP_NUM_THREADS": "1"}
        try:
            r = subprocess.run([exe, "check", "lint", str(path), "-o", str(rep)], capture_output=True, text=True,
                               timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return "failed: timed out"
        detail = ""
        if rep.is_file():
            data = json.loads(rep.read_text())
            failing = data.get("summary", {}).get("failing", [])
            errors = [e for e in data.get("lint_entries", []) if e.get("level") in ("exception", "error")]
            if failing or errors:
                msgs = "; ".join(str(e.get("message", e))[:200] for e in errors[:3])
                return f"failed: {len(failing)} failing nodes {failing[:5]} {msgs}".strip()
        elif r.returncode == 0:
            detail = " (no report)"
        if r.returncode != 0:
            tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
            return f"failed: exit {r.returncode}: {' | '.join(tail)}"
        return "clean" + detail


def check_trt_readiness(model: str | os.PathLike | onnx.ModelProto, lint: bool = True) -> ReadinessReport:
    """Check a graph (path or ModelProto) against the TensorRT 10 rules above."""
    path = None
    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        path = str(model)
        proto = onnx.load(path, load_external_data=False)
    rep = ReadinessReport(path)
    rep.ops, rep.unsupported_ops, rep.data_dependent_ops = check_ops(proto)
    rep.dynamic_dims = check_shapes(proto)
    rep.int64_problems, rep.notes = check_int64(proto)
    if lint:
        if path is None:
            with tempfile.TemporaryDirectory() as td:
                p = Path(td) / "model.onnx"
                onnx.save(proto, str(p))
                rep.lint = run_lint(p)
        else:
            rep.lint = run_lint(path)
    else:
        rep.lint = "skipped: disabled"
    return rep


def write_checked_graph(out: Path, name: str, write: Callable[[Path], None],
                        parity: Callable[[Path], dict[str, Any]], lint: bool, log: Callable[[str], None],
                        reference: str) -> tuple[ReadinessReport, dict[str, Any]]:
    """A graph file ``name`` written into ``out`` atomically: ``write(path)`` writes it in a
    temporary folder inside ``out``; its TensorRT readiness is checked (a graph that is not
    ready is logged) and ``parity(path)`` compares it with ``reference`` (a parity that did
    not pass fails the export); only then is it moved in.  Returns (readiness, parity)."""
    from .onnx_export import ExportError  # noqa: PLC0415

    tmp = Path(tempfile.mkdtemp(prefix=".tmp-export-", dir=out))
    try:
        f = tmp / name
        write(f)
        ready = check_trt_readiness(f, lint=lint)
        if not ready.ok:
            log(f"warning: {f.name} is not TensorRT-ready: {ready.problems}")
        checked = parity(f)
        if not checked["passed"]:
            measure = checked.get("measure", "max_abs_diff")
            raise ExportError(f"{f.name}: ONNX Runtime differs from {reference}: {measure.replace('_', ' ')} "
                              f"{checked[measure]:.3g} (> {checked['tolerance']:g})")
        os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ready, checked
