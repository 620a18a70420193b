from pathlib import Path

import pytest

ALL_SAMPLES = sorted((Path(__file__).resolve().parent.parent / "samples").glob("*.onnx"))
MODERN = {"bert_tiny", "gpt_tiny", "convnext_tiny", "mbconv_se", "densenet_block"}
# the foundation issue's samples (MLPs, CNNs, ResNets); the modern blocks are tested on their own
SAMPLES = [p for p in ALL_SAMPLES if p.stem not in MODERN]


@pytest.fixture(params=SAMPLES, ids=lambda p: p.stem)
def sample(request):
    return request.param
