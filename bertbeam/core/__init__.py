"""What runs in every worker process and knows no argv: the engine (encode -> plan -> run ->
postprocess), the element types, the dead letter, the ``Task`` contract, model loading and
its backends (torch, ONNX Runtime, int8), memory, counters and fingerprints."""
