from __future__ import annotations

from fastapi.testclient import TestClient


def test_read_model_describes_the_base(client: TestClient) -> None:
    body = client.get("/v1/model").json()
    assert body["architecture"] == "mlp"
    assert (body["input_dim"], body["output_dim"]) == (16, 4)
    assert body["device"] == "cpu" and body["dtype"] == "float32"
    assert body["parameters"] == 16 * 8 + 8 + 8 * 4 + 4
    assert body["target_modules"] == [
        {"name": "layer1", "in_features": 16, "out_features": 8},
        {"name": "layer2", "in_features": 8, "out_features": 4},
    ]
