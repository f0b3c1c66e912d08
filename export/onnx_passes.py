"""Graph rewrites applied to exported ONNX graphs: same ops, same math, faster runtimes.

``gelu_for_fusion``: torch's exporter writes exact GELU as ``x * (0.5 * (1 + erf(x / sqrt 2)))``
(the 0.5 on the erf branch).  ONNX Runtime fuses GELU into one kernel only for
``(x * (1 + erf(x / sqrt 2))) * 0.5`` or ``(0.5 * x) * (1 + erf(x / sqrt 2))``, so
without this the refinement head runs five full-resolution element-wise passes per GELU.
The rewrite regroups the two multiplications (float rounding only); TensorRT and
every other runtime read plain ``Mul`` nodes as before.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def _is_scalar(consts: dict[str, np.ndarray], name: str, value: float, tol: float = 1e-3) -> bool:
    v = consts.get(name)
    return v is not None and v.size == 1 and abs(float(v.reshape(())) - value) <= tol


def gelu_for_fusion(model: onnx.ModelProto) -> int:
    """Regroup ``x * (0.5 * (1 + erf(x / sqrt 2)))`` as ``(x * (1 + erf(x / sqrt 2))) * 0.5``
    in place; returns how many GELUs were rewritten."""
    g = model.graph
    consts = _constants(g)
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    producer = {o: n for n in g.node for o in n.output}
    count = 0
    for erf in [n for n in g.node if n.op_type == "Erf"]:
        div = producer.get(erf.input[0])
        if div is None or div.op_type != "Div" or not _is_scalar(consts, div.input[1], math.sqrt(2)):
            continue
        x = div.input[0]
        add = users.get(erf.output[0], [])
        if len(add) != 1 or add[0].op_type != "Add":
            continue
        add = add[0]
        one = add.input[1] if add.input[0] == erf.output[0] else add.input[0]
        half_mul = users.get(add.output[0], [])
        if not _is_scalar(consts, one, 1.0) or len(half_mul) != 1 or half_mul[0].op_type != "Mul":
            continue
        half_mul = half_mul[0]
        half = half_mul.input[1] if half_mul.input[0] == add.output[0] else half_mul.input[0]
        final = users.get(half_mul.output[0], [])
        if not _is_scalar(consts, half, 0.5) or len(final) != 1 or final[0].op_type != "Mul" \
                or x not in final[0].input:
            continue
        final = final[0]
        # half_mul: x * (1 + erf) ; final: (that) * 0.5 -- same output names, same node order
        del half_mul.input[:]
        half_mul.input.extend([x, add.output[0]])
        del final.input[:]
        final.input.extend([half_mul.output[0], half])
        count += 1
    return count
