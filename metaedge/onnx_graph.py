"""Facts about an exported ONNX graph that every exporter, backend and gate reads: the tensor names
metaedge exports, the one image input and its shape, whether the graph is explicitly quantized
(QDQ) and the quantization step of its output.

Layer 0 (torch-free; ``onnx`` is imported only inside the functions): the fp32 exporter in
``deploy/`` and the QDQ exporter in ``compress/metaquant`` write the same names."""

from __future__ import annotations

from pathlib import Path

from metaedge.errors import MetaedgeError

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "is_qdq", "onnx_input_spec", "output_step"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def _load(onnx_path: Path | str):
    import onnx

    return onnx.load(str(onnx_path), load_external_data=False)


def onnx_input_spec(onnx_path: Path | str) -> tuple[str, tuple[int, ...], str]:
    """(input name, static batch-1 shape, output name) of an ONNX model; symbolic dims become 1."""
    model = _load(onnx_path)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise MetaedgeError(f"{onnx_path} has {len(inputs)} graph inputs", f"export a model with one image input named `{INPUT_NAME}`")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims)
    return inputs[0].name, shape, model.graph.output[0].name


def is_qdq(onnx_path: Path | str) -> bool:
    """True for explicitly quantized ONNX (QuantizeLinear/DequantizeLinear nodes)."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in _load(onnx_path).graph.node)


def output_step(onnx_path: Path | str) -> float | None:
    """The quantization step (scale) of the graph output when a DequantizeLinear with a scalar
    constant scale produces it, else None (the parity rule then falls back to the logits' range)."""
    from onnx import numpy_helper

    graph = _load(onnx_path).graph
    producer = {o: n for n in graph.node for o in n.output}
    node = producer.get(graph.output[0].name)
    if node is None or node.op_type != "DequantizeLinear":
        return None
    scale_name = node.input[1]
    inits = {i.name: i for i in graph.initializer}
    if scale_name in inits:
        scale = numpy_helper.to_array(inits[scale_name])
    else:
        const = producer.get(scale_name)
        attr = next((a for a in const.attribute if a.name == "value"), None) if const is not None and const.op_type == "Constant" else None
        if attr is None:
            return None
        scale = numpy_helper.to_array(attr.t)
    return float(scale.reshape(-1)[0]) if scale.size == 1 else None
