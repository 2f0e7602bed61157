"""xgrammar against llguidance on this machine, for structured outputs (issue 30): the two
libraries that compile a JSON schema, a regex or a grammar against a tokenizer and fill a token
bitmask per sequence. SmolLM2-135M-Instruct's tokenizer (49,152 tokens), generated JSON schemas
of growing size (nested objects, arrays, enums, bounded numbers, optional fields).

    .venv/bin/pip install llguidance  # the one not in the project's extras (xgrammar is, in gen)
    .venv/bin/python bench/grammar_libs.py [--schemas 24] [--tokens 300] [--out FILE]

  tokenizer     building the library's view of the vocabulary (once per base)
  first mask    a new schema to its first bitmask, cold (each library's cache new for every
                schema): compiling, a matcher, the first fill (what a request's first token
                waits for; llguidance does less up front and more in its first fills)
  mask          filling one sequence's bitmask for each next token, along a valid answer that
                walks the grammar (random allowed tokens, seeded), then accepting the token
  apply         the bitmask applied to one row of logits (torch, in place)
Medians over the schemas; every answer each library produced is checked to parse as JSON and
validate against its schema (jsonschema).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != HERE)]

from app.families.decoder.gguf import converted_folder, known_gguf  # noqa: E402


def schema(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """A random object schema: strings, bounded numbers, enums, arrays and nested objects."""
    props: dict[str, Any] = {}
    for i in range(rng.randint(2, 5)):
        kind = rng.choice(["string", "integer", "number", "enum", "boolean", "array", "object"])
        if kind == "object" and depth < 2:
            props[f"f{i}"] = schema(rng, depth + 1)
        elif kind == "array":
            props[f"f{i}"] = {"type": "array", "items": {"type": "integer", "minimum": 0,
                                                         "maximum": 99}, "maxItems": 4}  # fmt: skip
        elif kind == "enum":
            props[f"f{i}"] = {"enum": [f"v{j}" for j in range(rng.randint(2, 5))]}
        elif kind == "integer":
            props[f"f{i}"] = {"type": "integer", "minimum": -50, "maximum": 50}
        elif kind == "number":
            props[f"f{i}"] = {"type": "number", "minimum": 0, "maximum": 1000}
        elif kind == "string":
            props[f"f{i}"] = {"type": "string", "maxLength": 12}
        else:
            props[f"f{i}"] = {"type": "boolean"}
    required = [k for k in props if rng.random() < 0.7]
    return {"type": "object", "properties": props, "required": required,
            "additionalProperties": False}  # fmt: skip


class Xgrammar:
    name = "xgrammar"

    def __init__(self, tokenizer: Any, vocab: int) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
        self.vocab = vocab

    def compile(self, text: str) -> Any:
        return self.xgr.GrammarCompiler(self.info, cache_enabled=False).compile_json_schema(text)

    def matcher(self, compiled: Any) -> Any:
        return self.xgr.GrammarMatcher(compiled)

    def bitmask(self) -> torch.Tensor:
        return self.xgr.allocate_token_bitmask(1, self.vocab)

    def fill(self, matcher: Any, mask: torch.Tensor) -> None:
        matcher.fill_next_token_bitmask(mask)

    def accept(self, matcher: Any, token: int) -> None:
        assert matcher.accept_token(token)

    def done(self, matcher: Any) -> bool:
        return bool(matcher.is_terminated())

    def apply(self, logits: torch.Tensor, mask: torch.Tensor) -> None:
        self.xgr.apply_token_bitmask_inplace(logits, mask)


class Llguidance:
    name = "llguidance"

    def __init__(self, tokenizer: Any, vocab: int) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.ll, self.llt = llguidance, llguidance.torch
        self.tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
        self.vocab = vocab

    def compile(self, text: str) -> Any:
        return self.ll.LLMatcher.grammar_from_json_schema(text)  # the rest happens lazily

    def matcher(self, compiled: Any) -> Any:
        m = self.ll.LLMatcher(self.tok, compiled)
        assert not m.is_error(), m.get_error()
        return m

    def bitmask(self) -> torch.Tensor:
        return self.llt.allocate_token_bitmask(1, self.vocab)

    def fill(self, matcher: Any, mask: torch.Tensor) -> None:
        self.llt.fill_next_token_bitmask(matcher, mask, 0)

    def accept(self, matcher: Any, token: int) -> None:
        assert matcher.consume_token(token), matcher.get_error()

    def done(self, matcher: Any) -> bool:
        return bool(matcher.is_stopped())

    def apply(self, logits: torch.Tensor, mask: torch.Tensor) -> None:
        self.llt.apply_token_bitmask_inplace(logits, mask)


def allowed(mask: torch.Tensor, vocab: int) -> list[int]:
    bits = mask[0].view(torch.int32)
    ids = torch.arange(vocab)
    words, shifts = ids // 32, ids % 32
    return ids[((bits[words] >> shifts) & 1).bool()].tolist()


def walk(
    lib: Any, text: str, tokenizer: Any, seed: int, limit: int, eos: int, blank: set[int]
) -> dict:
    """A valid answer, token by token: each step's mask, then a random allowed token (EOS
    only once the answer may end, or the limit is near; whitespace, which JSON allows between
    any two tokens, only when nothing else is allowed: a random walk would pad forever)."""
    rng = random.Random(seed)
    start = time.perf_counter()
    matcher = lib.matcher(lib.compile(text))
    mask = lib.bitmask()
    lib.fill(matcher, mask)
    first_ms = (time.perf_counter() - start) * 1000
    logits = torch.randn(1, lib.vocab)
    fills, applies, tokens = [], [], []
    while not lib.done(matcher) and len(tokens) < limit:
        if tokens:
            start = time.perf_counter()
            lib.fill(matcher, mask)
            fills.append(time.perf_counter() - start)
        start = time.perf_counter()
        lib.apply(logits, mask)
        applies.append(time.perf_counter() - start)
        choices = allowed(mask, lib.vocab)
        # Prefer closing the answer as it grows: short tokens of structure over long strings.
        token = eos if eos in choices and (len(choices) == 1 or len(tokens) > limit // 2) else None
        if token is None:
            pool = [c for c in choices if c != eos and c not in blank] or choices
            token = rng.choice(pool)
        lib.accept(matcher, token)
        tokens.append(token)
    return {"first_ms": first_ms, "fill_ms": [f * 1000 for f in fills],
            "apply_ms": [a * 1000 for a in applies], "done": lib.done(matcher),
            "text": tokenizer.decode([t for t in tokens if t != eos])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--schemas", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "loraserve-bench-models")  # fmt: skip
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import jsonschema
    from transformers import AutoTokenizer

    gguf = known_gguf("SmolLM2-135M-Instruct")
    assert gguf is not None
    tokenizer = AutoTokenizer.from_pretrained(converted_folder(gguf, args.cache))
    vocab = len(tokenizer)
    eos = tokenizer.eos_token_id
    blank = {i for i in range(vocab) if not tokenizer.decode([i]).strip()}
    rng = random.Random(0)
    schemas = [schema(rng) for _ in range(args.schemas)]
    results: dict[str, Any] = {
        "vocab": vocab,
        "schemas": args.schemas,
        "torch_threads": torch.get_num_threads(),
    }
    for cls in (Xgrammar, Llguidance):
        start = time.perf_counter()
        lib = cls(tokenizer, vocab)
        init_ms = (time.perf_counter() - start) * 1000
        compile_ms, fill_ms, apply_ms, valid, finished = [], [], [], 0, 0
        for i, s in enumerate(schemas):
            answer = walk(lib, json.dumps(s), tokenizer, i, args.tokens, eos, blank)
            compile_ms.append(answer["first_ms"])
            fill_ms += answer["fill_ms"]
            apply_ms += answer["apply_ms"]
            if answer["done"]:
                finished += 1
                try:
                    jsonschema.validate(json.loads(answer["text"]), s)
                    valid += 1
                except (json.JSONDecodeError, jsonschema.ValidationError) as exc:
                    print(f"{lib.name}: schema {i}: {exc}\n{answer['text']}", flush=True)
        results[lib.name] = {
            "tokenizer_ms": init_ms,
            "first_mask_ms_median": statistics.median(compile_ms),
            "first_mask_ms_max": max(compile_ms),
            "mask_ms_median": statistics.median(fill_ms),
            "mask_ms_p99": sorted(fill_ms)[int(0.99 * (len(fill_ms) - 1))],
            "apply_ms_median": statistics.median(apply_ms),
            "answers_finished": finished, "answers_valid": valid, "tokens": len(fill_ms),
        }  # fmt: skip
        print(lib.name, json.dumps(results[lib.name]), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
