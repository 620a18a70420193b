"""onnxinit: re-initialize the weights of any ONNX model so that it trains well."""
__version__ = "0.1.0"

from .api import autoinit, load_model, save_model  # noqa: E402
from .classic import init  # noqa: E402
from .lsuv import lsuv  # noqa: E402
from .wn_api import wninit  # noqa: E402

__all__ = ["autoinit", "init", "lsuv", "wninit", "load_model", "save_model", "__version__"]
