"""Chat rows a tiny decoder learns by SFT, and their dataset and answers over HTTP."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

ROWS = [
    {"messages": [{"role": "user", "content": f"capital {w}"},
                  {"role": "assistant", "content": a}]}
    for w, a in [("France", "Paris"), ("fox", "lazy dog"), ("world", "today")]
] + [{"prompt": "LoRA adapters are", "completion": " low rank"}]  # fmt: skip


def upload(client: TestClient, rows: list[object]) -> str:
    data = "\n".join(json.dumps(r) for r in rows).encode()
    response = client.post("/v1/datasets", files={"file": ("chats.jsonl", data)})
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "chat"
    return str(response.json()["id"])


def answer(client: TestClient, model: str, row: dict) -> str:
    if "messages" in row:
        body = {
            "model": model,
            "messages": row["messages"][:-1],
            "temperature": 0,
            "max_tokens": 12,
        }
        got = client.post("/v1/chat/completions", json=body).json()
        return str(got["choices"][0]["message"]["content"])
    body = {"model": model, "prompt": row["prompt"], "temperature": 0, "max_tokens": 12}
    return str(client.post("/v1/completions", json=body).json()["choices"][0]["text"])
