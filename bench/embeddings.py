"""Model time of all-MiniLM-L6-v2 batches through the service's predictor: adapters vs the base.

Run: .venv/bin/python bench/embeddings.py [--device cpu|cuda] [--out bench/results/embeddings-cpu.json]
Texts of about 32 tokens. For each (batch, adapters), times (median, ms) one forward of each of
these, in turn, round after round (so that all four meet the same machine noise):
  base     the batch on the base alone (the baseline every ratio is against)
  mixed    every text on its own adapter, spread evenly over the adapters (stacked path)
  one      every text on one adapter (unmerged)
  merged   every text on one adapter's merged copy
Adapters are rank 8 on query and value (lora_alpha 16), made as PEFT makes them, B random.
This measures the engine in one process, as the inference thread runs it; the HTTP service
under load is bench/embeddings_service.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.adapters import AdapterRegistry, BaseInfo  # noqa: E402
from app.adapters.peft_format import tensor_key  # noqa: E402
from app.engine import Predictor  # noqa: E402
from app.families import load_family  # noqa: E402
from app.model import resolve_device  # noqa: E402
from bench.kernels import interleaved  # noqa: E402

WORDS = [
    "the",
    "a",
    "model",
    "adapter",
    "serves",
    "many",
    "fine",
    "tuned",
    "variants",
    "of",
    "one",
    "frozen",
    "encoder",
    "behind",
    "an",
    "endpoint",
    "with",
    "batching",
    "across",
    "requests",
    "and",
    "rows",
    "while",
    "each",
    "text",
    "picks",
    "its",
    "own",
    "low",
    "rank",
    "update",
    "trained",
    "on",
    "a",
    "small",
    "task",
]


def texts(n: int, seed: int) -> list[str]:
    """Sentences of about 32 tokens (22 to 26 words, the special tokens and some word pieces)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(22, 26))) for _ in range(n)]


def write_adapters(root: Path, linears: dict[str, tuple[int, int]], n: int = 16) -> list[Path]:
    """n PEFT adapter folders: rank 8 on query and value, lora_alpha 16, B random (not zero)."""
    gen = torch.Generator().manual_seed(0)
    targets = [k for k in linears if k.endswith(("attention.self.query", "attention.self.value"))]
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["query", "value"]}
    folders = []
    for i in range(n):
        tensors = {}
        for name in targets:
            n_in, n_out = linears[name]
            tensors[tensor_key(name, "lora_A")] = torch.randn(8, n_in, generator=gen) / n_in**0.5
            tensors[tensor_key(name, "lora_B")] = torch.randn(n_out, 8, generator=gen) * 0.01
        folder = root / f"a{i}"
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text(json.dumps(config))
        (folder / "adapter_model.safetensors").write_bytes(save(tensors))
        folders.append(folder)
    return folders


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    family = load_family(Path("all-MiniLM-L6-v2"), device)
    base, encoder = family.base, family.text  # type: ignore[attr-defined]
    linears = {n: (i.in_features, i.out_features) for n, i in base.linears().items()}
    info = BaseInfo(linears, base.name, base.fingerprint, base.device, base.dtype)
    store = Path(tempfile.mkdtemp())
    registry = AdapterRegistry.local(store, info, 64, 1 << 30)
    for folder in write_adapters(Path(tempfile.mkdtemp()), linears):
        files = [
            (folder / f).read_bytes() for f in ("adapter_config.json", "adapter_model.safetensors")
        ]
        registry.upload(folder.name, *files)
    predictor = Predictor(base, registry, 1 << 30)
    rows = []
    for batch, distinct in ((64, 16), (64, 4), (32, 16), (8, 8)):
        tokens = encoder.tokenize(texts(batch, seed=batch))
        mixed = [f"a{i % distinct}" for i in range(batch)]
        loaded = predictor.resolve(mixed, "adapters")
        one = predictor.resolve(["a0"], "adapters")
        predictor.merge("a0")

        def run(names, loaded, used, tokens=tokens):
            return lambda: predictor.forward(tokens, names, loaded, used)

        ms = interleaved(device, args.budget, {
            "base": run([None] * batch, {}, "unmerged"),
            "mixed": run(mixed, loaded, "unmerged"),
            "one": run(["a0"] * batch, one, "unmerged"),
            "merged": run(["a0"] * batch, one, "merged"),
        })  # fmt: skip
        base_ms, mixed_ms, one_ms, merged_ms = ms["base"], ms["mixed"], ms["one"], ms["merged"]
        row = {
            "batch": batch, "adapters": distinct, "tokens_per_text": tokens.width,
            "base_ms": base_ms, "mixed_ms": mixed_ms, "one_ms": one_ms, "merged_ms": merged_ms,
            "mixed_over_base": mixed_ms / base_ms, "one_over_base": one_ms / base_ms,
            "merged_over_base": merged_ms / base_ms,
        }  # fmt: skip
        rows.append(row)
        print(
            f"batch {batch:3d} x {distinct:2d} adapters ({tokens.width} tokens): "
            f"base {base_ms:7.1f} ms | mixed {mixed_ms:7.1f} ({mixed_ms / base_ms:.2f}x) | "
            f"one {one_ms:7.1f} ({one_ms / base_ms:.2f}x) | merged {merged_ms:7.1f} "
            f"({merged_ms / base_ms:.2f}x)",
            flush=True,
        )
    if args.out:
        meta = {
            "device": str(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        }
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
