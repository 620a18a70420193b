from pathlib import Path

import pytest

ALL_SAMPLES = sorted((Path(__file__).resolve().parent.parent / "samples").glob("*.onnx"))
TRANSFORMERS = {"bert_tiny"}
# the foundation issue's samples (MLPs, CNNs, ResNets); transformer exports are tested on their own
SAMPLES = [p for p in ALL_SAMPLES if p.stem not in TRANSFORMERS]


@pytest.fixture(params=SAMPLES, ids=lambda p: p.stem)
def sample(request):
    return request.param
