"""Labelled data for training graphs: arrays by model input, checked once, cut into batches."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import OnnxInitError


@dataclass
class Dataset:
    """``inputs`` (model input name -> array) and ``labels``, all with the same first axis."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def feeds(self, index, labels_name: str) -> dict:
        """The rows ``index`` of every input, and the labels under ``labels_name``."""
        feeds = {name: array[index] for name, array in self.inputs.items()}
        feeds[labels_name] = self.labels[index]
        return feeds


def read_arrays(data) -> tuple[dict, str]:
    """(arrays by key, a name for messages) from a dict of arrays or an .npz path."""
    if isinstance(data, (str, Path)):
        path = Path(data)
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {k: archive[k] for k in archive.files}, str(path)
        except (OSError, ValueError) as exc:
            raise OnnxInitError(f"{path}: cannot read the data ({exc})") from exc
    if isinstance(data, dict):
        return {k: np.asarray(v) for k, v in data.items()}, "data"
    raise OnnxInitError("data must be a dict of arrays or the path of an .npz file")


def load_dataset(data, model: onnx.ModelProto, input_map: dict | None = None, labels: str = "y",
                 loss: str = "ce") -> Dataset:
    """Arrays for every data input of ``model`` and the labels, checked.

    ``input_map`` maps data keys to model input names; without it a key named like an
    input feeds it, and a lone remaining array feeds a lone input.
    """
    arrays, source = read_arrays(data)
    if labels not in arrays:
        raise OnnxInitError(f"{source}: no labels array {labels!r} (has {sorted(arrays)})")
    initializers = {t.name for t in model.graph.initializer}
    declared = {vi.name: vi for vi in model.graph.input if vi.name not in initializers}
    mapping = dict(input_map or {})
    unknown = [name for name in mapping.values() if name not in declared]
    if unknown:
        raise OnnxInitError(f"input_map names {unknown}, not inputs of the model (inputs: {sorted(declared)})")
    for key in list(mapping):
        if key not in arrays:
            raise OnnxInitError(f"{source}: no array {key!r} for input {mapping[key]!r} (has {sorted(arrays)})")
    rest = [k for k in arrays if k != labels and k not in mapping]
    for name in declared:
        if name not in mapping.values() and name in arrays:
            mapping[name] = name
    missing = [name for name in declared if name not in mapping.values()]
    leftover = [k for k in rest if k not in mapping]
    if len(missing) == 1 and len(leftover) == 1:
        mapping[leftover[0]] = missing[0]
        missing = []
    if missing:
        raise OnnxInitError(f"{source}: no array for model input(s) {missing} (has {sorted(arrays)}; "
                            "map keys to inputs with input_map)")
    inputs = {}
    for key, name in mapping.items():
        dtype = onnx.helper.tensor_dtype_to_np_dtype(declared[name].type.tensor_type.elem_type)
        inputs[name] = _checked(arrays[key], key, source).astype(dtype, copy=False)
    target = _checked(arrays[labels], labels, source)
    sizes = {len(a) for a in [*inputs.values(), target]}
    if len(sizes) != 1:
        raise OnnxInitError(f"{source}: inputs and labels have different sample counts {sorted(sizes)}")
    if loss == "ce":
        if target.dtype.kind == "f" and not np.all(target == np.round(target)):
            raise OnnxInitError(f"{source}: labels {labels!r} must be class indices for the 'ce' loss")
        target = target.astype(np.int64)
    else:
        target = target.astype(np.float32)
    return Dataset(inputs, target)


def _checked(array: np.ndarray, key: str, source: str) -> np.ndarray:
    if array.ndim == 0 or len(array) == 0:
        raise OnnxInitError(f"{source}: array {key!r} holds no samples")
    if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
        raise OnnxInitError(f"{source}: array {key!r} holds NaN or infinite values")
    if array.dtype.kind not in "fiub":
        raise OnnxInitError(f"{source}: array {key!r} is not numeric ({array.dtype})")
    return array


def check_labels(dataset: Dataset, loss: str, logits_shape: tuple) -> None:
    """Class indices within the logits' width (axis 1) for 'ce'; the logits' shape for 'mse'."""
    if loss == "ce":
        width = logits_shape[1]
        low, high = int(dataset.labels.min()), int(dataset.labels.max())
        if low < 0 or high >= width:
            raise OnnxInitError(f"labels run from {low} to {high}, outside the {width} classes of the logits")
        if dataset.labels.shape[1:] != tuple(logits_shape[2:]):
            raise OnnxInitError(f"labels of shape {dataset.labels.shape[1:]} per sample do not match logits "
                                f"of shape {tuple(logits_shape[1:])} (classes on axis 1)")
    elif dataset.labels.shape[1:] != tuple(logits_shape[1:]):
        raise OnnxInitError(f"targets of shape {dataset.labels.shape[1:]} per sample do not match the output's "
                            f"{tuple(logits_shape[1:])}")
