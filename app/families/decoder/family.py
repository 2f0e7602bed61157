"""The decoder family (`causal_lm`): text generation on the OpenAI chat and completions routes,
with continuous batching across adapters; trained by SFT on chats."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from app.families.decoder.datasets import ChatDatasetStore
from app.families.decoder.generate.engine import GenerationEngine
from app.families.decoder.model import CausalInfo, load_causal
from app.families.decoder.training import train_sft_lora
from app.families.family import PEFT_TARGETS, Facts, Family, safetensors_weights
from app.lora import LoraAdapter
from app.lora.layers import wrap_layers
from app.model import BaseModel, file_sha256
from app.model.dtype import DtypeSetting, resolve_dtype
from app.model.frozen import frozen_module
from app.startup.basekind import is_causal_lm, is_hf_folder
from app.startup.openmp import warn_if_unsuited
from app.state import Database, ObjectStore
from app.training.datasets import DatasetStore
from app.training.jobs import Job
from app.training.trainer import TrainConfig

if TYPE_CHECKING:
    from app.engine import Predictor
    from app.settings import Settings


class DecoderFamily(Family):
    name = "causal_lm"
    task = "generation"
    inputs = "texts"
    offers = "generates text; use POST /v1/chat/completions or POST /v1/completions"
    endpoint = "POST /v1/chat/completions"
    losses: ClassVar[tuple[str, ...]] = ("sft",)
    trains_on = "chats"

    def __init__(self, base: BaseModel, causal: CausalInfo) -> None:
        super().__init__(base)
        self.causal = causal  # the tokenizer, chat template, context and stop tokens

    @classmethod
    def claims(cls, folder: Path) -> bool:
        return is_hf_folder(folder) and is_causal_lm(folder)

    @classmethod
    def load(
        cls, folder: Path, device: torch.device, name: str, dtype: DtypeSetting
    ) -> DecoderFamily:
        weights_path = safetensors_weights(folder)
        served = resolve_dtype(dtype, device)
        module, info = load_causal(folder, served)
        module.to(device=device)
        wrapped = wrap_layers(module)
        base = BaseModel(
            name=name,
            architecture=str(getattr(module.config, "model_type", "causal_lm")),
            family=cls.name,
            module=module,
            device=device,
            dtype=served,
            fingerprint=file_sha256(weights_path),
            targets={n: m for n, m in wrapped.items() if not frozen_module(n)},
            input_dim=None,
            output_dim=info.vocab_size,
            frozen=frozenset(n for n, _ in module.named_modules() if frozen_module(n)),
        )
        return cls(base, info)

    @property
    def facts(self) -> Facts:
        return Facts(
            context_length=self.causal.context_length,
            vocab_size=self.causal.vocab_size,
            chat_template=self.causal.has_chat_template,
        )

    def default_targets(self) -> tuple[str, ...] | None:
        return PEFT_TARGETS.get(self.base.architecture)

    def dataset_store(self, db: Database, objects: ObjectStore, max_rows: int) -> DatasetStore:
        return ChatDatasetStore(db, objects, max_rows, self.causal)

    def trainer(
        self, datasets: DatasetStore, job: Job, config: TrainConfig
    ) -> Callable[..., LoraAdapter]:
        assert isinstance(datasets, ChatDatasetStore)  # the store dataset_store made
        rows = datasets.load_rows(job.training_dataset)
        held = None
        if job.validation_dataset is not None:
            held = datasets.load_rows(job.validation_dataset)
        return partial(train_sft_lora, self.base.module, self.causal, config, rows, held)

    def generation(self, predictor: Predictor, settings: Settings) -> GenerationEngine:
        warn_if_unsuited(decoder=True)
        return GenerationEngine(
            predictor, self.causal, settings.kv_cache_bytes, settings.max_running_seqs,
            settings.prefill_chunk_tokens, settings.max_waiting_seqs,
            settings.generation_queue_timeout_s, settings.max_seqs_per_request,
            settings.kv_block_tokens, settings.prefix_caching, settings.pack_weights,
        )  # fmt: skip
