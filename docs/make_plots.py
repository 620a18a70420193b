"""The signal of a no-normalization ResNet-20 before and after `onnxinit autoinit`, as two PNGs.

    .venv/bin/python docs/make_plots.py

* docs/resnet20_explodes.png: convs drawn as torchvision's ResNet does
  (kaiming_normal_, mode fan_out, ReLU gain): each residual branch keeps its
  input's variance, so the stream doubles block after block.
* docs/resnet20_vanishes.png: PyTorch's layer defaults (the exported sample as
  it is: Kaiming-uniform with a = sqrt 5, variance 1/(3 fan_in)): the signal fades.
Both overlaid with the same model after autoinit, measured in ONNX Runtime.
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxinit.api import autoinit, load_model, save_model  # noqa: E402
from onnxinit.inspect import inspect_model  # noqa: E402
from onnxinit.plot import plot_variance  # noqa: E402

SAMPLE = ROOT / "samples" / "resnet20_nobn.onnx"


def torchvision_init(model, seed=0):
    """kaiming_normal_(mode='fan_out', nonlinearity='relu') on every conv, zero biases."""
    rng = np.random.default_rng(seed)
    for t in model.graph.initializer:
        w = numpy_helper.to_array(t)
        if w.ndim == 4:
            fan_out = w.shape[0] * w.shape[2] * w.shape[3]
            w = rng.normal(0, np.sqrt(2.0 / fan_out), w.shape).astype(np.float32)
        elif w.ndim == 1:
            w = np.zeros_like(w)
        t.CopyFrom(numpy_helper.from_array(w, t.name))
    return model


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = [("explodes", torchvision_init(load_model(SAMPLE)), "torchvision ResNet init"),
                 ("vanishes", load_model(SAMPLE), "PyTorch layer defaults")]
        for name, before, label in cases:
            before_path, after_path = tmp / f"{name}_before.onnx", tmp / f"{name}_after.onnx"
            save_model(before, before_path)
            save_model(autoinit(before_path, seed=0), after_path)
            runs = [inspect_model(p, measure_signal=True, batch=64) for p in (before_path, after_path)]
            out = ROOT / "docs" / f"resnet20_{name}.png"
            plot_variance(runs, [label, "after onnxinit autoinit"], out,
                          title=f"ResNet-20 without normalization: {label} vs AutoInit")
            print(f"{out.relative_to(ROOT)}: before, last layer variance {runs[0].rows[-1].variance:.3g}; "
                  f"after, {runs[1].rows[-1].variance:.3g}")


if __name__ == "__main__":
    main()
