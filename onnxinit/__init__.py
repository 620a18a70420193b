"""onnxinit: re-initialize the weights of any ONNX model so that it trains well."""
__version__ = "0.1.0"

from .api import autoinit, load_model, save_model  # noqa: E402

__all__ = ["autoinit", "load_model", "save_model", "__version__"]
