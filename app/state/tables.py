"""The schema, as SQLAlchemy Core tables; migrations/ creates and changes it, never create_all."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()
# 64-bit row numbers; SQLite only auto-numbers a column declared exactly INTEGER PRIMARY KEY.
SEQ = BigInteger().with_variant(Integer(), "sqlite")
DEFAULT_PROJECT = "default"  # the project of the ADMIN_KEYS / API_KEYS settings

projects = Table(
    "projects",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    # Quotas; NULL: the service-wide setting applies.
    Column("max_adapters", Integer),
    Column("max_queued_jobs", Integer),
    Column("max_stored_bytes", BigInteger),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("project_id", String(64), ForeignKey("projects.id"), nullable=False),
    Column("role", String(16), nullable=False),  # admin | user
    Column("key_hash", String(64), nullable=False, unique=True),  # sha256 of the key
    Column("label", String(200)),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger),
)

# One immutable adapter version of a project: its id is the sha256 of its two files, and its
# objects live under "<project>/<id>/" in the store.
versions = Table(
    "versions",
    metadata,
    Column("project_id", String(64), ForeignKey("projects.id"), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("size_bytes", BigInteger, nullable=False),  # of adapter_model.safetensors
    Column("stored_bytes", BigInteger, nullable=False),  # both files: what quotas count
    Column("weights_sha256", String(64), nullable=False),
    Column("config", Text, nullable=False),  # adapter_config.json as stored
    Column("metadata", Text, nullable=False),  # JSON: the weights header's metadata
    Column("source", String(16), nullable=False),  # upload | training | import
    Column("created_at", BigInteger, nullable=False),
    Column("problem", Text),  # JSON {code, message} once its objects failed to load
)

# Which version each name serves now.
adapters = Table(
    "adapters",
    metadata,
    Column("project_id", String(64), ForeignKey("projects.id"), primary_key=True),
    Column("name", String(200), primary_key=True),
    Column("version_id", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# Every version a name has served, oldest first; deleting the name deletes its history.
adapter_history = Table(
    "adapter_history",
    metadata,
    Column("seq", SEQ, primary_key=True, autoincrement=True),
    Column("project_id", String(64), ForeignKey("projects.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("version_id", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index("adapter_history_by_name", "project_id", "name", "seq"),
    Index("adapter_history_by_version", "project_id", "version_id"),
)

# Training datasets' records; the data is one object, "<project>/datasets/<id>".
datasets = Table(
    "datasets",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("project_id", String(64), ForeignKey("projects.id"), nullable=False),
    Column("format", String(16), nullable=False),  # tensors | text_pairs
    Column("rows", Integer, nullable=False),
    Column("input_dim", Integer),
    Column("output_dim", Integer),
    Column("bytes", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("filename", String(200)),
    Index("datasets_by_project", "project_id", "created_at"),
)

# Fine-tuning jobs: a worker holds a running job under a lease it renews (unix ms).
jobs = Table(
    "jobs",
    metadata,
    Column("seq", SEQ, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("project_id", String(64), ForeignKey("projects.id"), nullable=False),
    Column("status", String(16), nullable=False),
    # fine_tuning, or composition (training_dataset "" and the composition in hyperparameters)
    Column("kind", String(16), nullable=False, server_default="fine_tuning"),
    Column("adapter_name", String(200), nullable=False),
    Column("training_dataset", String(64), nullable=False),
    Column("validation_dataset", String(64)),
    Column("hyperparameters", Text, nullable=False),
    Column("progress", Text, nullable=False),
    Column("error", Text),
    Column("created_at", BigInteger, nullable=False),
    Column("started_at", BigInteger),
    Column("finished_at", BigInteger),
    Column("worker_id", String(64)),
    Column("lease_expires_ms", BigInteger),
    Index("jobs_by_status", "status", "seq"),
    Index("jobs_by_project", "project_id", "seq"),
)

job_events = Table(
    "job_events",
    metadata,
    Column("seq", SEQ, primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("level", String(16), nullable=False),
    Column("type", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Column("data", Text),
    Index("job_events_by_job", "job_id", "seq"),
)
