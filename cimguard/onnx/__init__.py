"""Read, legalise, convert to torch, run in onnxruntime, inspect and export ONNX networks."""
