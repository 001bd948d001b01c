"""The pipeline graph: Beam ``PTransform``s and I/O over the core (read, validate, tokenize,
batch, run, postprocess, write; incremental runs, vector sinks, the RunInference handler)."""
