# CPU image with both backends. The build stage compiles llama-cpp-python into a virtual environment; the final
# stage copies it and has no compiler. The base is Debian bookworm with Debian's python3 (3.11), the same in both
# stages, so the environment runs where it was built (and a local bookworm image stands in for Docker Hub's).
# GGML_NATIVE=OFF: the image must run on CPUs other than the one that built it.
# EXTRAS=llama-cpp leaves the Transformers backend (and torch, ~700 MB) out.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential cmake \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY local_llm_api ./local_llm_api
ARG EXTRAS=llama-cpp,transformers
# torch's CPU build (PyPI's default Linux wheel carries CUDA libraries this image does not use).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF"
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" ".[${EXTRAS}]"  # this project; its pins are in pyproject.toml

FROM ${BASE_IMAGE}
# libgomp1: llama.cpp's OpenMP runtime.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 app \
    && mkdir -p /models /logs /data \
    && chown app:app /models /logs /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
USER 1000
ENV HOST=0.0.0.0 PORT=8000 MODEL_DIR=/models LOG_FILE=/logs/server.log DATA_DIR=/data
# /data: stored responses (the Responses API); the working directory is not writable.
VOLUME ["/models", "/logs", "/data"]
WORKDIR /home/app
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["local-llm-api", "serve"]
