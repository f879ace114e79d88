# CPU image with both backends. The build stage compiles llama-cpp-python; the final stage has no compiler.
# GGML_NATIVE=OFF: the image must run on CPUs other than the one that built it.
# EXTRAS=llama-cpp leaves the Transformers backend (and torch, ~700 MB) out.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY local_llm_api ./local_llm_api
ARG EXTRAS=llama-cpp,transformers
# torch's CPU build (PyPI's default Linux wheel carries CUDA libraries this image does not use).
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF" PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[${EXTRAS}]"

FROM python:${PYTHON_VERSION}-slim
# libgomp1: llama.cpp's OpenMP runtime.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 app \
    && mkdir -p /models /logs \
    && chown app:app /models /logs
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
USER 1000
ENV HOST=0.0.0.0 PORT=8000 MODEL_DIR=/models LOG_FILE=/logs/server.log
VOLUME ["/models", "/logs"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["local-llm-api", "serve"]
