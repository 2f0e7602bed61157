"""Wire types of the shared HTTP API (docs/design.md); each family keeps its own beside it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.training.hyperparameters import Hyperparameters, Loss, TrainConfig

Residency = Literal["disk", "host", "device"]


MAX_SCALE = 16.0


class LoraEntry(BaseModel):
    """One adapter of a composition, with its scale: y = W x + Σ scale · s · B A x."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(description="an adapter's name, or name@version")
    scale: float = Field(
        default=1.0, ge=-MAX_SCALE, le=MAX_SCALE, allow_inf_nan=False,
        description="its weight; 0 leaves it out, negative subtracts it",
    )  # fmt: skip


class ErrorDetail(BaseModel):
    type: str
    code: str
    message: str
    param: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Status(BaseModel):
    status: str


class LinearPublic(BaseModel):
    name: str
    in_features: int
    out_features: int


class Identity(BaseModel):
    role: Literal["super", "admin", "api"] = Field(
        description="super: also projects and keys; admin: everything in its project; "
        "api: read and predict"
    )
    project: str = Field(description="the project the key belongs to")
    auth_enabled: bool


class ModelPublic(BaseModel):
    name: str
    architecture: str = Field(description="`mlp`, or the Hugging Face `model_type` (e.g. bert)")
    family: Literal["mlp", "hf", "causal_lm"]
    task: Literal["regression", "embedding", "generation"]
    inputs: Literal["vectors", "texts"] = Field(
        description="vectors: POST /v1/predict; texts: POST /v1/embeddings, or "
        "POST /v1/completions and /v1/chat/completions on a causal_lm base"
    )
    input_dim: int | None = Field(description="the width of an input vector; null for texts")
    output_dim: int = Field(description="the width of an output row or an embedding")
    max_seq_length: int | None = Field(
        description="texts: tokens kept per input (longer ones are truncated); null for vectors"
    )
    device: str
    dtype: str
    parameters: int
    target_modules: list[LinearPublic]
    context_length: int | None = Field(
        default=None, description="causal_lm: the most tokens a prompt and its answer may hold"
    )
    vocab_size: int | None = Field(default=None, description="causal_lm: the vocabulary's size")
    chat_template: bool | None = Field(
        default=None, description="causal_lm: whether /v1/chat/completions can format messages"
    )


class AdapterProblemPublic(BaseModel):
    code: str = Field(description="why the adapter cannot be served, e.g. invalid_adapter")
    message: str


class AdapterLayerPublic(BaseModel):
    module: str = Field(description="the targeted layer, as the base model names it")
    rank: int = Field(description="r for this layer (rank_pattern applied)")
    alpha: float = Field(description="lora_alpha for this layer (alpha_pattern applied)")
    scaling: float = Field(
        description="the factor s on this layer's B A: alpha / rank, or alpha / sqrt(rank) "
        "with use_rslora"
    )


class AdapterPublic(BaseModel):
    name: str
    version: str = Field(
        description="the version the name serves now: the hex SHA-256 of its two files. "
        "`name@version` (or 12 or more of its first digits) pins it in a prediction"
    )
    status: Literal["ready", "broken"] = Field(
        description="broken: its stored files can no longer be read or checked; it cannot "
        "serve predictions until an admin replaces it (overwrite=true) or deletes it"
    )
    error: AdapterProblemPublic | None = Field(description="why it is broken; null when ready")
    rank: int | None = Field(description="the config's r; null if the config is unreadable")
    alpha: float | None = Field(description="the config's lora_alpha")
    scaling: float | None = Field(
        description="the config's own lora_alpha / r (lora_alpha / sqrt(r) with use_rslora); "
        "layers with a rank_pattern or alpha_pattern entry differ, see `layers`"
    )
    use_rslora: bool | None
    target_modules: list[str] | None
    rank_pattern: dict[str, int] | None
    alpha_pattern: dict[str, float] | None
    layers: list[AdapterLayerPublic] | None = Field(
        description="every targeted layer with its own rank, alpha and scaling"
    )
    size_bytes: int | None = Field(
        description="bytes of adapter_model.safetensors as stored; null if it is missing"
    )
    sha256: str | None = Field(
        description="hex SHA-256 of adapter_model.safetensors as stored, the bytes the download "
        "holds (uploads are rewritten as fp32 with the service's header metadata); null if the "
        "file is missing"
    )
    uploaded_sha256: str | None = Field(
        description="hex SHA-256 of the weights file exactly as it was uploaded; null for "
        "trained adapters and imported folders"
    )
    created_at: int = Field(description="Unix time, seconds")
    source: Literal["upload", "training", "composition"]
    residency: Residency
    merged: bool


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterPublic]


class AdapterVersionPublic(BaseModel):
    version: str = Field(description="hex SHA-256 of the version's two files")
    current: bool = Field(description="whether the name serves this version now")
    served_from: int = Field(description="Unix time the name started to serve this version")
    created_at: int = Field(description="Unix time the version was first stored")
    size_bytes: int = Field(description="bytes of adapter_model.safetensors")
    sha256: str = Field(description="hex SHA-256 of adapter_model.safetensors")
    source: Literal["upload", "training", "composition"]


class AdapterVersionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterVersionPublic] = Field(description="newest first")


class DatasetCreate(BaseModel):
    """Small datasets as JSON; big ones as a safetensors file upload."""

    # Strict: "1.5" and true are not numbers. (The route reads the rows with orjson and numpy.)
    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: list[list[float]] = Field(description="(N, input_dim)")
    targets: list[list[float]] = Field(description="(N, output_dim)")


class DatasetPublic(BaseModel):
    id: str
    object: Literal["dataset"] = "dataset"
    rows: int
    input_dim: int | None = Field(description="null for text pairs")
    output_dim: int | None
    bytes: int
    created_at: int
    filename: str | None
    format: Literal["tensors", "text_pairs", "chat"]


class DatasetList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DatasetPublic]


# As a job reports them: every field filled in (no docstring: it would change the API's schema).
class ResolvedHyperparameters(TrainConfig):
    target_modules: list[str]  # type: ignore[assignment]  # a JSON list, as it was sent
    use_rslora: bool
    loss: Loss
    seed: int


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    adapter_name: str
    training_dataset: str
    validation_dataset: str | None = None
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class JobProgress(BaseModel):
    epoch: int
    epochs: int
    step: int
    total_steps: int
    train_loss: float | None
    validation_loss: float | None
    validation_recall_at_1: float | None = Field(
        default=None, description="text pairs: how often an anchor's nearest positive is its own"
    )
    validation_exact_match: float | None = Field(
        default=None,
        description="decoders: how often the greedy answer to a validation row is its reference",
    )


class JobError(BaseModel):
    code: str
    message: str


JobState = Literal["queued", "running", "succeeded", "failed", "cancelling", "cancelled"]


class JobPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    status: JobState
    adapter_name: str
    training_dataset: str
    validation_dataset: str | None
    created_at: int
    started_at: int | None
    finished_at: int | None
    hyperparameters: ResolvedHyperparameters
    progress: JobProgress
    error: JobError | None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobPublic]
    has_more: bool


class EventPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    type: Literal["message", "metrics"]
    message: str
    data: dict[str, Any] | None


class EventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EventPublic]
    has_more: bool


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")
    max_adapters: int | None = Field(default=None, ge=1, description="null: MAX_ADAPTERS")
    max_queued_jobs: int | None = Field(default=None, ge=1, description="null: MAX_QUEUED_JOBS")
    max_stored_bytes: int | None = Field(default=None, ge=1, description="null: no limit")


class ProjectPublic(BaseModel):
    id: str
    name: str
    created_at: int
    max_adapters: int | None
    max_queued_jobs: int | None
    max_stored_bytes: int | None


class ProjectList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ProjectPublic]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["admin", "api"] = Field(
        description="admin: everything in the project; api: read and predict"
    )
    label: str | None = Field(default=None, max_length=200)


class KeyPublic(BaseModel):
    id: str
    project_id: str
    role: Literal["admin", "api"]
    label: str | None
    created_at: int
    revoked_at: int | None


class KeyCreated(KeyPublic):
    key: str = Field(description="the key itself: shown this once, stored only as a hash")


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyPublic]
