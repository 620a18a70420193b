from pathlib import Path

import pytest

SAMPLES = sorted((Path(__file__).resolve().parent.parent / "samples").glob("*.onnx"))


@pytest.fixture(params=SAMPLES, ids=lambda p: p.stem)
def sample(request):
    return request.param
