"""Regexes in adapter configs run on RE2: PEFT's meaning, decided in linear time, bounded length.

target_modules / exclude_modules / modules_to_save as a string are full-matched against every
module name, and rank_pattern / alpha_pattern keys by PEFT's suffix rule; with Python's `re`,
`(.|.|.)*!` on ~210 names of ~30 characters backtracks for hours holding the GIL.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from app.adapters import peft_format as fmt
from app.errors import InvalidAdapter
from app.lora import pattern_key
from app.lora.config import MAX_PATTERN_CHARS
from support.gen_helpers import write_tiny_causal_lm
from support.server import running_server

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# SmolLM2-135M's layout: 30 layers of 7 projections, 210 names of 26 to 33 characters.
LINEARS = {
    f"model.layers.{i}.{'self_attn' if p[0] in 'qkvo' else 'mlp'}.{p}": (64, 64)
    for i in range(30)
    for p in PROJECTIONS
}
FROZEN = frozenset({"model.embed_tokens", "lm_head"})
CATASTROPHIC = "(.|.|.)*!"  # 3^n ways to split an n-character name, none ending in "!"
# Proves "not frozen", never a speed: RE2 decides these in milliseconds, `re` in hours.
NOT_FROZEN_S = 10.0


def parse(**edit: Any):
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], **edit}
    return fmt.parse_config(json.dumps(config).encode(), LINEARS, 64, frozenset(), FROZEN)


def refused(**edit: Any) -> InvalidAdapter:
    with pytest.raises(InvalidAdapter) as info:
        parse(**edit)
    return info.value


@pytest.mark.parametrize(
    ("edit", "param"),
    [
        ({"target_modules": CATASTROPHIC}, "target_modules"),
        ({"target_modules": ".*q_proj", "exclude_modules": CATASTROPHIC}, None),
        ({"modules_to_save": CATASTROPHIC}, "modules_to_save"),
        ({"rank_pattern": {CATASTROPHIC: 2}}, None),
        ({"alpha_pattern": {CATASTROPHIC: 2}}, None),
    ],
)
def test_a_catastrophic_pattern_is_decided_at_once(edit: dict, param: str | None) -> None:
    start = time.perf_counter()
    if param is None:  # a pattern that matches nothing is no error where it only narrows
        config = parse(**edit)
        assert len(config.target_modules) == 30
        assert {config.rank_for(m) for m in config.target_modules} == {4}
    else:
        assert refused(**edit).param == param
    assert time.perf_counter() - start < NOT_FROZEN_S


@pytest.mark.parametrize(
    "edit",
    [
        {"target_modules": "q" * (MAX_PATTERN_CHARS + 1)},
        {"exclude_modules": "q" * (MAX_PATTERN_CHARS + 1)},
        {"modules_to_save": "q" * (MAX_PATTERN_CHARS + 1)},
        {"rank_pattern": {"q" * (MAX_PATTERN_CHARS + 1): 2}},
        {"alpha_pattern": {"q" * (MAX_PATTERN_CHARS + 1): 2}},
    ],
)
def test_an_over_long_pattern_is_refused_naming_its_field(edit: dict) -> None:
    error = refused(**edit)
    field = next(iter(edit))
    assert error.param == field
    assert f"{MAX_PATTERN_CHARS + 1} characters, over the limit of {MAX_PATTERN_CHARS}" in str(
        error
    )


def test_a_pattern_at_the_length_limit_is_accepted() -> None:
    pattern = ".*" + "(q_proj)?" * ((MAX_PATTERN_CHARS - 8) // 9) + "q_proj"
    assert len(pattern) <= MAX_PATTERN_CHARS
    assert len(parse(target_modules=pattern).target_modules) == 30


@pytest.mark.parametrize(
    ("edit", "param"),
    [
        ({"target_modules": r"(q)_proj\1"}, "target_modules"),  # a backreference
        ({"target_modules": r".*(?<!self_attn\.)q_proj"}, "target_modules"),  # a lookbehind
        ({"exclude_modules": r"(?=.*mlp).*"}, "exclude_modules"),  # a lookahead
        ({"rank_pattern": {r"(q)\1": 2}}, "rank_pattern"),
        ({"alpha_pattern": {r"(?!k)q_proj": 2}}, "alpha_pattern"),
        ({"target_modules": "("}, "target_modules"),
    ],
)
def test_a_pattern_re2_cannot_run_is_refused_naming_its_field(edit: dict, param: str) -> None:
    error = refused(**edit)
    assert error.param == param
    assert "is not a regular expression RE2 accepts" in str(error)


BENIGN = [
    r".*\.(q_proj|v_proj)",
    r"model\.layers\.(1|2|3)\..*",
    r".*layers\.\d+\.mlp\.(up|down)_proj",
    r".*[0-9]\.self_attn\.[qk]_proj",
    r"(?i).*Q_PROJ",
    r".*_proj",
]


@pytest.mark.parametrize("pattern", BENIGN)
def test_a_string_target_selects_what_pythons_fullmatch_selects(pattern: str) -> None:
    expected = [m for m in LINEARS if re.fullmatch(pattern, m)]
    assert expected
    assert list(parse(target_modules=pattern).target_modules) == expected


@pytest.mark.parametrize(
    "key", [r"q_proj", r"layers\.1\.self_attn\.q_proj", r"\d+\.mlp\..*", r"(q|k)_proj", "1"]
)
def test_pattern_keys_follow_pythons_suffix_rule(key: str) -> None:
    for module in [*LINEARS, "xq_proj", "q_proj"]:
        peft = re.match(rf"(.*\.)?({key})$", module)
        assert (pattern_key({key: 2}, module) == key) == bool(peft), (key, module)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_causal_lm(tmp_path_factory.mktemp("llama") / "llama")


@pytest.mark.parametrize(
    ("target", "ranks"),
    [
        (r".*\.(q_proj|down_proj)", {r"layers\.1\..*": 2}),
        (r"model\.layers\.0\..*_proj", {"k_proj": 3, r"o_\w+": 5}),
    ],
)
def test_targets_and_ranks_are_the_ones_peft_builds(llama: Path, target: str, ranks: dict) -> None:
    model = AutoModelForCausalLM.from_pretrained(llama)
    linears = {n: (m.in_features, m.out_features) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=target, rank_pattern=ranks)
        )
    peft_ranks = {
        name.removeprefix("base_model.model."): module.r["default"]
        for name, module in peft.named_modules()
        if hasattr(module, "lora_A")
    }
    data = json.dumps({"r": 4, "lora_alpha": 8, "target_modules": target, "rank_pattern": ranks})
    config = fmt.parse_config(data.encode(), linears, 64)
    assert {m: config.rank_for(m) for m in config.target_modules} == peft_ranks


def test_a_catastrophic_upload_is_a_422_while_healthz_answers(llama: Path, tmp_path: Path) -> None:
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": CATASTROPHIC}
    with running_server(tmp_path, base_model=str(llama)) as server:
        answers: list[httpx.Response] = []

        def upload() -> None:
            files = {"config": ("c", json.dumps(config).encode()), "weights": ("w", b"\0" * 8)}
            # A frozen server times out, and `answers` stays empty.
            client = httpx.Client(base_url=server.url, timeout=NOT_FROZEN_S)
            with client, contextlib.suppress(httpx.TimeoutException):
                answers.append(client.post("/v1/adapters", data={"name": "x"}, files=files))

        uploading = threading.Thread(target=upload, daemon=True)
        uploading.start()
        try:
            healthz = httpx.get(f"{server.url}/healthz", timeout=NOT_FROZEN_S)
            uploading.join(2 * NOT_FROZEN_S)
        finally:
            if not answers:  # frozen in a regex: SIGTERM would never be handled
                server.process.kill()
                server.process.wait()
        assert healthz.status_code == 200
        assert answers[0].status_code == 422, answers[0].text
        assert answers[0].json()["error"]["param"] == "target_modules"
