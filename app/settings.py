"""All configuration, from the environment (prefix LORASERVE_). Nothing else reads os.environ but
app/startup (the OpenMP rule, settled before torch loads) and app/deploy/local.py (a Ray cluster's
workers inherit their settings through it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

EMBEDDED_MODEL = Path(__file__).resolve().parent.parent / "models" / "seed-linear"
MiB = 1024 * 1024


class Settings(BaseSettings):
    """Service settings (docs/design.md); tests pass values directly: Settings(adapters_dir=tmp)."""

    model_config = SettingsConfigDict(env_prefix="LORASERVE_", extra="ignore")

    base_model: Path = EMBEDDED_MODEL
    adapters_dir: Path = Path("adapters")
    data_dir: Path = Path("data")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The serving dtype of a Hugging Face base (app/model/dtype.py): `auto` is bf16 where the
    # device computes it natively, fp32 elsewhere. The mlp family keeps its config.json's dtype.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Comma-separated; when either list is set, every route but /healthz and /readyz needs a key.
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # Keys that create projects and their keys (/v1/projects); they act as admin keys of the
    # default project elsewhere.
    super_admin_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    max_rank: int = Field(default=64, ge=1)
    max_upload_bytes: int = Field(default=128 * MiB, ge=1024)
    max_request_rows: int = Field(default=1024, ge=1)
    max_adapters_per_request: int = Field(default=8, ge=1)
    # A saved composition costing more (its SVDs; app.adapters.composition.cost) is a job.
    compose_inline_max_flops: float = Field(default=1e10, ge=0, allow_inf_nan=False)
    max_dataset_rows: int = Field(default=1_000_000, ge=1)
    max_adapters: int = Field(default=100_000, ge=1)
    max_queued_jobs: int = Field(default=100, ge=1)
    batching: bool = True
    max_batch_rows: int = Field(default=256, ge=1)
    batch_wait_ms: float = Field(default=2.0, ge=0)
    max_queue_rows: int = Field(default=8192, ge=1)
    adapter_cache_bytes: int = Field(default=1024 * MiB, ge=0)
    merged_cache_bytes: int = Field(default=256 * MiB, ge=0)
    # Generation on a decoder base (docs/design.md, "Generation"): the KV cache's bytes, the
    # sequences one step may hold, the prompt tokens one step prefills, and the bounded queue
    # of requests waiting for room (how many, and for how long before a 503).
    kv_cache_bytes: int = Field(default=2048 * MiB, ge=1 * MiB)
    max_running_seqs: int = Field(default=32, ge=1)
    prefill_chunk_tokens: int = Field(default=256, ge=16)
    max_waiting_seqs: int = Field(default=256, ge=1)
    # Sequences (prompts times n) one request may ask for; more is a 422 at once.
    max_seqs_per_request: int = Field(default=64, ge=1)
    generation_queue_timeout_s: float = Field(default=30.0, gt=0)
    # The KV cache is paged in blocks of this many tokens; full blocks of a prompt are shared
    # by later prompts that start the same way on the same adapter version (prefix caching).
    kv_block_tokens: int = Field(default=16, ge=1, le=1024)
    prefix_caching: bool = True
    # A decoder's linear weights also held in oneDNN's blocked layout on the CPU: faster
    # products (bf16: the same bits; fp32: summed in another order), twice their memory.
    pack_weights: bool = True
    # `loraserve serve` listens here; UVICORN_HOST/UVICORN_PORT are read too, as plain uvicorn does.
    host: str = Field(
        default="127.0.0.1", validation_alias=AliasChoices("LORASERVE_HOST", "UVICORN_HOST", "host")
    )
    port: int = Field(
        default=8000,
        ge=0,
        le=65535,
        validation_alias=AliasChoices("LORASERVE_PORT", "UVICORN_PORT", "port"),
    )
    # Connection hygiene (slow or idle clients): seconds until a request's headers must be in,
    # until its body must be in, and how long an idle keep-alive connection is kept.
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=60.0, gt=0)
    keep_alive_timeout_s: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=1024, ge=1)
    # Requests being handled at once; beyond it 503 with Retry-After (connections stay open).
    max_concurrent_requests: int = Field(default=512, ge=1)
    # Shared state (docs/design.md, "More than one process"). None: SQLite at
    # DATA_DIR/loraserve.db and the folder ADAPTERS_DIR/.store.
    database_url: str | None = None
    store_url: str | None = None
    s3_endpoint_url: str | None = Field(
        default=None, validation_alias=AliasChoices("LORASERVE_S3_ENDPOINT_URL", "S3_ENDPOINT_URL")
    )
    # How long a replica may keep answering with a name's old version after another replica
    # replaced or deleted it.
    registry_ttl_ms: float = Field(default=1000.0, ge=0)
    # Training: whether this process runs a worker of its own, and the lease a worker holds on
    # a running job (renewed every third of it; a job whose lease lapses is interrupted).
    embedded_worker: bool = True
    job_lease_ms: int = Field(default=15_000, ge=100)

    @field_validator("admin_keys", "api_keys", "super_admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'loraserve.db'}"

    @property
    def store(self) -> str:
        return self.store_url or f"file://{self.adapters_dir.resolve() / '.store'}"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.admin_keys or self.api_keys or self.super_admin_keys)
