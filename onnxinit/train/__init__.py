"""Training graphs on ONNX Runtime's training backend (NIO, compare, training checks)."""
