"""Pure-ONNX rewrites that turn the exporter's QDQ graph into one of the two profiles.

The dynamo exporter (see :mod:`metaedge.compress.metaquant.export`) writes per-tensor activation
Q/DQ and int8 weight constants behind a per-channel DequantizeLinear. Then, per profile (see
:mod:`metaedge.qdq.profiles`):

* ``ort`` (:func:`quantize_biases`): every Conv/Gemm bias goes onto the int32 grid ``s_x * s_w``
  behind its own DequantizeLinear -- ONNX Runtime's QDQ selectors only fuse a node whose every
  input comes from a DQ, and QLinearConv adds an int32 bias. Per layer: ``x -> Q -> DQ ->
  Conv(DQ(int8 W, axis 0), DQ(int32 b)) -> [Relu/Clip] -> Q -> DQ``, which ORT rewrites to
  QLinearConv. :func:`wide_weights` lists any weight with levels ORT's x86 u8s8 kernels can
  saturate on (a model prepared for the other profile).
* ``tensorrt`` (:func:`to_tensorrt`): each int8 weight initializer becomes the float weight
  ``q * s`` (already on its grid, so any rounding mode gives back ``q``) feeding QuantizeLinear ->
  DequantizeLinear per channel on axis 0; biases stay float; every consumer of a quantized tensor
  gets its own Q/DQ pair (:mod:`metaedge.qdq.tensorrt_rules` checks the result).

Torch-free; every function edits the ``onnx.ModelProto`` in place.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from metaedge.errors import MetaedgeError

__all__ = ["quantize_biases", "to_tensorrt", "wide_weights"]


def _insert_before(graph, new_nodes: dict) -> None:
    """Put ``new_nodes[i]`` (a list of nodes) in front of node ``i``, keeping the graph topologically sorted."""
    if not new_nodes:
        return
    nodes = []
    for idx, node in enumerate(graph.node):
        nodes.extend(new_nodes.get(idx, []))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def _initializers(graph) -> dict[str, Any]:
    return {i.name: i for i in graph.initializer}


def _const_value(name: str, inits: dict[str, Any], consts: dict[str, np.ndarray]) -> np.ndarray | None:
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name])
    return consts.get(name)


def quantize_biases(model) -> int:
    """Rewrite each float bias of a Conv/Gemm fed by DQ(x) and DQ(W) to DQ(int32 bias, s_x * s_w)."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = _initializers(graph)
    consts: dict[str, np.ndarray] = {}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    producer = {o: n for n in graph.node for o in n.output}
    new_nodes: dict[int, list] = {}
    done = 0
    for idx, node in enumerate(graph.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or not node.input[2]:
            continue
        if node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
            continue
        dq_x, dq_w = producer.get(node.input[0]), producer.get(node.input[1])
        if dq_x is None or dq_w is None or dq_x.op_type != "DequantizeLinear" or dq_w.op_type != "DequantizeLinear":
            continue
        bias = _const_value(node.input[2], inits, consts)
        s_x = _const_value(dq_x.input[1], inits, consts)
        s_w = _const_value(dq_w.input[1], inits, consts)
        if bias is None or s_x is None or s_w is None or s_x.size != 1:
            continue
        s_b = (np.float32(s_x.reshape(())) * s_w.astype(np.float32).reshape(-1)).astype(np.float32)
        if s_b.size == 1:
            s_b = np.full(bias.shape, s_b.reshape(()), np.float32)
        q = np.round(bias.astype(np.float32) / s_b)
        if np.abs(q).max(initial=0) >= 2**31 - 1:
            raise MetaedgeError(f"bias of {node.name or node.op_type} overflows int32 at scale s_x*s_w", "recalibrate: an activation scale is degenerate")
        base = (node.name or f"{node.op_type}_{idx}").replace("/", "_")
        q_name, s_name, o_name = f"{base}.bias_int32", f"{base}.bias_scale", f"{base}.bias_dq"
        graph.initializer.extend([numpy_helper.from_array(q.astype(np.int32), q_name), numpy_helper.from_array(s_b, s_name)])
        new_nodes[idx] = [helper.make_node("DequantizeLinear", [q_name, s_name], [o_name], name=f"{base}.bias_dequant", axis=0)]
        node.input[2] = o_name
        done += 1
    _insert_before(graph, new_nodes)
    # drop float bias initializers nobody reads any more
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used or i.name in {o.name for o in graph.output}]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    return done


def _dedicate_pairs(model) -> int:
    """Give every consumer of a Q -> DQ pair its own copy of the pair (TensorRT fuses a DQ into
    one consumer); returns how many pairs were added."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    extra: dict[int, list] = {}
    index = {id(n): k for k, n in enumerate(graph.node)}
    added = 0
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        users = consumers.get(dq.output[0], [])
        keep_first = dq.output[0] not in outputs  # a graph output keeps the original pair
        for j, user in enumerate(users):
            if keep_first and j == 0:
                continue
            tag = f"{dq.output[0]}.pair{j}"
            q2 = copy.deepcopy(q)
            q2.name, q2.output[0] = f"{q.name or 'q'}.pair{j}", f"{tag}.q"
            dq2 = copy.deepcopy(dq)
            dq2.name, dq2.input[0], dq2.output[0] = f"{dq.name or 'dq'}.pair{j}", q2.output[0], tag
            for k, name in enumerate(user.input):
                if name == dq.output[0]:
                    user.input[k] = tag
            extra.setdefault(index[id(dq)], []).extend([q2, dq2])
            added += 1
    if extra:
        nodes = []
        for k, n in enumerate(graph.node):
            nodes.append(n)
            nodes.extend(extra.get(k, []))
        del graph.node[:]
        graph.node.extend(nodes)
    # a Q shared by several DQs: one Q per DQ
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    extra, nodes = {}, list(graph.node)
    for k, q in enumerate(nodes):
        if q.op_type != "QuantizeLinear":
            continue
        for j, dq in enumerate(consumers.get(q.output[0], [])[1:], start=1):
            q2 = copy.deepcopy(q)
            q2.name, q2.output[0] = f"{q.name or 'q'}.split{j}", f"{q.output[0]}.split{j}"
            dq.input[0] = q2.output[0]
            extra.setdefault(k, []).append(q2)
            added += 1
    if extra:
        del graph.node[:]
        graph.node.extend([m for k, n in enumerate(nodes) for m in (n, *extra.get(k, []))])
    return added


def to_tensorrt(model) -> dict[str, int]:
    """Rewrite the exporter's graph to the tensorrt profile (in place): float weights through Q -> DQ,
    explicit INT8 zero points on every weight pair, one Q/DQ pair per consumer."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = _initializers(graph)
    new_nodes: dict[int, list] = {}
    weights = 0
    for idx, node in enumerate(graph.node):
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        init = inits[node.input[0]]
        if init.data_type != onnx.TensorProto.INT8:
            raise MetaedgeError(
                f"DequantizeLinear {node.name} reads a {onnx.TensorProto.DataType.Name(init.data_type)} constant",
                "this export path only writes int8 weights; report a bug",
            )
        q = numpy_helper.to_array(init).astype(np.float32)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        if scale.size > 1:
            shape[axis] = scale.size
        w = (q * scale.reshape(shape)).astype(np.float32)
        base = init.name.replace("/", "_")
        w_name, zp_name, q_name = f"{base}.float", f"{base}.zero_point", f"{base}.quantized"
        graph.initializer.extend([numpy_helper.from_array(w, w_name), numpy_helper.from_array(np.zeros(scale.shape, np.int8), zp_name)])
        attrs: dict[str, Any] = {"axis": axis} if scale.ndim >= 1 else {}  # a 1-D scale (even of one channel) is per-axis
        new_nodes[idx] = [helper.make_node("QuantizeLinear", [w_name, node.input[1], zp_name], [q_name], name=f"{base}.quantize", **attrs)]
        node.input[0] = q_name
        if len(node.input) > 2:
            node.input[2] = zp_name
        else:
            node.input.append(zp_name)
        weights += 1
    _insert_before(graph, new_nodes)
    pairs = _dedicate_pairs(model)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    return {"float_weights": weights, "dedicated_pairs_added": pairs}


def wide_weights(model, limit: int = 64) -> list[str]:
    """Integer weight initializers with levels beyond +-``limit``: ORT's x86 u8s8 kernels can
    saturate on them (see metaedge.qdq.profiles); the ort profile avoids them."""
    import onnx
    from onnx import numpy_helper

    return [
        i.name
        for i in model.graph.initializer
        if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2 and np.abs(numpy_helper.to_array(i).astype(np.int16)).max(initial=0) > limit
    ]
