"""What each runtime wants an explicitly quantized (QDQ) ONNX graph to look like: the export
profiles (:mod:`.profiles`) QAT trains for and the exporter writes, and TensorRT's Q/DQ placement
rules (:mod:`.tensorrt_rules`); the quantization a run asks for, checked before any work: the
``wKaM`` spec (:mod:`.spec`) and the per-layer bit policy (:mod:`.policy`). Layer 0: read by ``compress/`` (QAT, PTQ, the QDQ export) and
``deploy/`` (profile per backend) alike; numpy and onnx only."""
