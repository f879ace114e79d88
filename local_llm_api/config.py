"""Server settings, read from the environment and `.env` with the project's original variable names."""

from __future__ import annotations

import os
from enum import Enum
from functools import cached_property
from pathlib import Path

from pydantic import ByteSize, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class BackendChoice(str, Enum):
    auto = "auto"
    llama_cpp = "llama-cpp"
    transformers = "transformers"
    sentence_transformers = "sentence-transformers"
    cross_encoder = "cross-encoder"  # rerankers: CrossEncoder folders, sequence-classification models


class KvCacheType(str, Enum):
    """llama.cpp's KV cache types (`-ctk`/`-ctv`): bytes per value 2, 1.0625 (blocks of 32 in 34 bytes), 0.5625."""

    f16 = "f16"
    q8_0 = "q8_0"
    q4_0 = "q4_0"


class FlashAttention(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


class LogLevel(str, Enum):
    debug = "DEBUG"
    info = "INFO"
    warning = "WARNING"
    error = "ERROR"


class Settings(BaseSettings):
    """Every field maps to the upper-case environment variable of the same name (`model_dir` -> `MODEL_DIR`)."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,  # `VAR=` (common in compose files) means unset, not an invalid empty value
        extra="ignore",
        case_sensitive=False,
        frozen=True,
    )

    # Each description is the setting's row in docs/configuration.md (scripts/docs.py writes the table; a test
    # fails when the page and this class differ): say what a user needs, in Markdown.

    # Where models live and which one answers requests that name none.
    model_dir: Path = Field(Path("models"), description="Folder scanned for `.gguf` files and model folders (subfolders too).")
    default_model: str = Field("", description="The model for requests that name none; unset: `TRANSFORMERS_DEFAULT_MODEL`, "
                               "else the only model there is.")
    model_backend: BackendChoice = Field(BackendChoice.auto, description="`auto` (by the model), `llama-cpp` (GGUF files "
                                         "only) or `transformers` (GGUF files through Transformers too).")
    preload_model: bool = Field(False, description="Load `DEFAULT_MODEL` at start-up (in the background).")
    auto_load: bool = Field(True, description="Load a known but unloaded model when a request names it.")
    model_load_wait_seconds: float = Field(
        60.0, ge=0, description="How long a request waits for a model that is loading before it gets 503 `model_loading`."
    )

    # llama.cpp
    gpu_layers: int = Field(-1, ge=-1, description="Layers offloaded to the GPU; -1 offloads every layer when a GPU is "
                            "present.")
    context_size: int = Field(0, ge=0, description="Tokens of context per request (per slot). 0: the model's training "
                              "context where memory allows: a GGUF model's KV cache is allocated up front for every slot (and "
                              "one for embeddings), so the context is cut to what fits `MEMORY_BUDGET` beside the weights, or "
                              "half this machine's memory without one (never below 2048; a warning says so). `GET /v1/models` "
                              "and `/models` say each model's `context_length`.")
    threads: int | None = Field(None, ge=1, description="Generation threads; unset lets llama.cpp (or torch) choose.")
    batch_size: int = Field(512, ge=1, description="Most tokens in one decode step.")
    parallel_slots: int = Field(4, ge=1, le=256, description="Sequences decoded together (continuous batching, both "
                                "backends); each has its own `CONTEXT_SIZE` of KV cache, so memory grows with both.")
    max_queue: int = Field(64, ge=0, description="Requests that may wait for a slot; beyond it, 429.")
    prefill_chunk: int = Field(64, ge=1, description="The fewest prompt tokens a step reads while other sequences "
                               "stream (more when they fit in `PREFILL_STEP_MS`).")
    prefill_step_ms: float = Field(150.0, ge=0, description="While other sequences stream, a step reads as many prompt "
                                   "tokens as fit in this many milliseconds by the measured cost of a token (at least "
                                   "`PREFILL_CHUNK`, at most `BATCH_SIZE`): prompts that arrive together are read together, "
                                   "and a running stream's time between tokens stays under it. 0: `PREFILL_CHUNK` only.")
    kv_cache_type: KvCacheType = Field(KvCacheType.f16, description="The KV cache's type for GGUF models, keys and "
                                       "values (llama.cpp's `-ctk`/`-ctv`): `f16`, `q8_0` (about half the memory per "
                                       "token) or `q4_0` (about a quarter); the memory budget and the context that "
                                       "fits it count it. Quantised types need flash attention (not `FLASH_ATTN=off`).")
    flash_attn: FlashAttention = Field(FlashAttention.auto, description="Flash attention for GGUF models (llama.cpp's "
                                       "`-fa`): `auto` is off where attention runs on the CPU with an f16 cache and slots "
                                       "of 4,096 tokens or more (faster there past a few hundred tokens of context: an "
                                       "agent's next turn 2-3x; a step's attention scores take BATCH_SIZE x heads x 4 "
                                       "bytes per token of a slot's context), otherwise llama.cpp's choice (on where the "
                                       "device has it), and always with REPRODUCIBLE=true or a quantised cache; `on` or "
                                       "`off`.")
    prefix_cache: bool = Field(True, description="Reuse a slot's KV cache for a prompt that shares its prefix.")
    prefix_cache_disk: ByteSize = Field(ByteSize(4 * 2**30), description="The prefix cache's disk tier (GGUF models): "
                                        "the KV state of prompt prefixes of 1,024 tokens or more is written under "
                                        "`DATA_DIR/prefix-cache` when a slot's cache is dropped, the model unloaded or the "
                                        "server stopped, and read back for a prompt that shares it, so that an agent's "
                                        "long first turn after a restart reads only what is new. At most this many bytes "
                                        "(least recently used out); 0 turns it off.")
    prompt_lookup_tokens: int = Field(8, ge=0, le=64, description="Most tokens a streaming sequence guesses per step "
                                      "from its own prompt and output for the model to check (speculative decoding; on "
                                      "the Transformers engine for a sequence decoding alone; the answer does not "
                                      "change); 0 turns it off.")
    prompt_lookup_adaptive: bool = Field(True, description="Feed only the guesses that raise the expected tokens per "
                                         "second (measured step cost, each sequence's acceptance). `false` feeds every "
                                         "guess found, for hardware where a token more in a step costs little, or to "
                                         "measure.")
    reproducible: bool = Field(False, description="Seeded and `temperature: 0` requests evaluate their whole prompt (no "
                               "prefix reuse), so that the same request gives the same answer whatever shares its batch, "
                               "in the common case (see [Reproducibility](apis/openai.md#reproducibility): not a guarantee "
                               "under concurrent load).")

    # Transformers
    transformers_default_model: str = Field(
        "", description="A model folder or Hugging Face repo id served by Transformers (and the default model "
        "when `DEFAULT_MODEL` is unset)."
    )
    transformers_device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
                                     description="`auto` (CUDA when present), `cpu`, `cuda`, `cuda:N`, `mps`.")
    transformers_dtype: str = Field("auto", pattern="^(auto|float32|float16|bfloat16)$", description="`auto` "
                                    "(bfloat16, or float16 where bf16 is missing, on CUDA; float32 on CPU), `float32`, "
                                    "`float16`, `bfloat16`.")

    # Several models at once
    models_config: Path | None = Field(None, description="A YAML file declaring models (see [Models](models/index.md)).")
    model_aliases: str = Field("", description="Other names for models, for clients that send names of their own: "
                               "`NAME=MODEL` pairs, comma-separated, `NAME` may hold `*` (`claude-*=SmolLM2` answers "
                               "Claude Code's background model). Used only for names that match no model.")
    rerank_model: str = Field("", description="The model `/rerank` uses when a request names none; unset: the only "
                              "cross-encoder in `MODEL_DIR`, else the only embedding model, else `DEFAULT_MODEL`.")
    max_loaded_models: int = Field(0, ge=0, description="Most models loaded at once; 0 = no limit.")
    memory_budget: ByteSize = Field(ByteSize(0), description="Most bytes the loaded models may take at once (`8GB`, "
                                    "`512MiB`; 0 = no limit): each model's weights plus, for a generative model, the KV "
                                    "cache of every slot at its full context (read from the GGUF header or `config.json`; "
                                    "f16 for llama.cpp, with its embedding context; the Transformers dtype).")
    keep_alive: float = Field(0, ge=0, description="Unload a model idle this many seconds; 0 keeps models loaded.")

    # Sampling defaults, used when a request leaves the parameter out.
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature when a request gives none.")
    top_p: float = Field(0.95, ge=0, le=1, description="Nucleus sampling when a request gives none.")
    top_k: int = Field(40, ge=0, description="Top-k sampling when a request gives none (0: off).")
    min_p: float = Field(0.05, ge=0, le=1, description="Min-p sampling when a request gives none.")
    repeat_penalty: float = Field(1.0, gt=0, description="1.0 (off) like the OpenAI API and llama.cpp's server.")
    max_tokens: int | None = Field(None, ge=1, description="Default cap on a chat answer's length; unset: the rest of the "
                                   "context.")

    # Stored responses (the Responses API's `store` and `previous_response_id`)
    data_dir: Path = Field(Path("data"), description="Where the server keeps its state (stored responses: "
                           "`responses.sqlite3`).")
    responses_max_stored: int = Field(10000, ge=0, description="Most stored responses; the oldest go first. 0 = no limit.")
    responses_max_age_seconds: float = Field(30 * 86400, ge=0, description="Stored responses older than this (30 days) "
                                             "are dropped; 0 = kept.")

    # Requests
    stream_keepalive_seconds: float = Field(5.0, ge=0, description="A stream silent this long (a long prompt being read) "
                                            "gets a keep-alive frame: an SSE comment, Anthropic's `ping`; 0: none.")
    strict_request_fields: bool = Field(False, description="Refuse request fields this server does not know with a 400 "
                                        "(OpenAI's behaviour). Off, they are accepted and named in the `X-Ignored-Fields` "
                                        "response header and the access log: clients add fields with every release.")

    # Security
    parse_special_in_content: bool = Field(True, description="Read control-token texts in messages (`<|im_end|>` written "
                                           "by a user) as those tokens, as Transformers' `apply_chat_template` and "
                                           "llama.cpp's server do; `false` reads them as plain text, so that a user cannot "
                                           "forge a system turn (see [Security](security.md)).")
    api_key_required: bool = Field(False, description="Require a key on every route but `/health` (and the `/docs` pages).")
    api_key: str = Field("", description="One key or several, comma-separated; sent as `Authorization: Bearer` or "
                         "`X-API-Key`.")
    admin_api_key: str = Field("", description="A separate key for the routes that manage models (`/models/pull`, "
                               "`/models/{name}/load` and `unload`, `/api/pull`, `/api/delete`, `/api/copy`); it opens every "
                               "other route too. Unset: those routes take the API key when keys are required; with no key "
                               "at all they are open on a loopback server and refused (403 `admin_key_required`) on one "
                               "that listens beyond loopback.")
    pull_max_bytes: ByteSize = Field(ByteSize(50 * 2**30), description="The largest download a pull may start (checked "
                                     "against the Hub's file sizes first; 0 = no cap). A pull never writes over a loaded "
                                     "model (409 `model_in_use`).")
    allowed_hosts: str = Field("", description="Protection against DNS rebinding: the server answers only `Host` names "
                               "that are this machine's (`localhost`, `*.localhost`, its host name, any IP address) and "
                               "these (comma-separated, `*.example.com` patterns), wherever it listens; others get 403 "
                               "`host_not_allowed`. `*` turns the check off. docker-compose sets `api,api-cuda` (its "
                               "service names). Serving under a domain of your own (nginx forwards the browser's `Host`), "
                               "list that domain.")
    cors_origins: str = Field("", description="Browser origins that may call the API directly, comma-separated, or `*`. "
                              "Unset: `http(s)://localhost`, `127.0.0.1` and `[::1]` on any port, and `app://`, `file://`, "
                              "`tauri://`, `vscode-webview://` pages; a list replaces that default. Preflights are answered "
                              "before the key check; the key is still needed on the request itself. Writes (POST, DELETE) "
                              "from a page of any other origin are refused with 403 `origin_not_allowed`; our own pages "
                              "(same origin) always pass.")

    # More than one replica behind one endpoint, on Ray Serve (pip install 'local-llm-api[ray]'; RAY_ADDRESS joins
    # a cluster, else a local Ray instance starts)
    replicas: int = Field(0, ge=0, description="0: one process, no Ray. N: N replicas on Ray Serve behind one endpoint "
                          "([More than one machine](deployment.md#more-than-one-machine-replicas-on-ray-serve)); "
                          "`RAY_ADDRESS` joins a cluster, else a local Ray instance starts.")
    max_replicas: int = Field(0, ge=0, description="Above `REPLICAS`: Ray Serve adds replicas up to this many while "
                              "requests queue (`PARALLEL_SLOTS` in hand per replica is its target) and removes them when idle.")
    replica_cpus: float | None = Field(None, gt=0, description="CPUs Ray reserves per replica; unset: `THREADS`, else 1.")
    replica_gpus: float = Field(0, ge=0, description="GPUs Ray gives each replica (`1`, or `0.5` to put two replicas on "
                                "one GPU).")

    # Server and logs
    host: str = Field("127.0.0.1", description="The address to listen on.")
    port: int = Field(8000, ge=1, le=65535, description="The port to listen on.")
    log_level: LogLevel = Field(LogLevel.info, description="`DEBUG`, `INFO`, `WARNING` or `ERROR`.")
    log_file: Path | None = Field(None, description="Also write the log to this file.")
    log_format: str = Field("text", pattern="^(text|json)$", description="`text`, or `json` (one object per line).")
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Larger bodies get 413 (compressed bodies: "
                                   "before and after decompression); room for a few images sent as base64.")

    # Images (vision models)
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest image file a request may carry (sent "
                                 "or fetched); larger ones get 400 `image_too_large`.")
    max_image_pixels: int = Field(16_777_216, ge=1, description="Most pixels (width x height) of one image; 400 "
                                  "`image_too_large` above it, read from the header before decoding.")
    max_images: int = Field(16, ge=0, description="Most images in one request; 400 `too_many_images` above it.")
    image_url_fetch: str = Field("", description="Which `http(s)` image URLs the server fetches: empty (off: send "
                                 "images as base64 or data URIs), `*` (any public host) or hosts separated by commas "
                                 "(`*.example.com` takes its subdomains). Loopback, private and link-local addresses are "
                                 "never fetched, nor redirects to them; `file://` never.")
    image_url_timeout_seconds: float = Field(10.0, gt=0, description="How long fetching one image URL may take.")
    body_read_timeout_seconds: float = Field(30.0, gt=0, description="A request body must arrive within this, else 408 "
                                             "`request_timeout` (a stalled client holds no model).")
    shutdown_grace_seconds: float = Field(
        30.0, ge=0, description="On SIGTERM, how long running generations may finish (new connections are refused at once)."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_file", "models_config", mode="before")
    @classmethod
    def _empty_log_file_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @cached_property
    def aliases(self) -> tuple[tuple[str, str], ...]:
        pairs = [item.split("=", 1) for item in self.model_aliases.split(",") if item.strip()]
        return tuple((name.strip(), model.strip()) for name, model in pairs)

    @cached_property
    def api_keys(self) -> tuple[str, ...]:
        return tuple(key.strip() for key in self.api_key.split(",") if key.strip())

    def check(self) -> None:
        """Cross-field rules that a single field's validator cannot express."""
        if self.max_replicas and self.max_replicas < self.replicas:
            raise SettingsError("MAX_REPLICAS", f"{self.max_replicas} is below REPLICAS ({self.replicas})")
        if any("=" not in item for item in self.model_aliases.split(",") if item.strip()):
            raise SettingsError("MODEL_ALIASES", "write NAME=MODEL pairs separated by commas (claude-*=SmolLM2)")
        if self.kv_cache_type != KvCacheType.f16 and self.flash_attn == FlashAttention.off:
            raise SettingsError("KV_CACHE_TYPE", f"{self.kv_cache_type.value} needs flash attention: set FLASH_ATTN to "
                                                 "auto or on, or KV_CACHE_TYPE=f16")
        if self.api_key_required and not self.api_keys:
            raise SettingsError("API_KEY", "API_KEY_REQUIRED is true but API_KEY is empty")
        if self.model_backend in (BackendChoice.sentence_transformers, BackendChoice.cross_encoder):
            raise SettingsError("MODEL_BACKEND", "choose auto, llama-cpp or transformers (embedding and reranking folders are "
                                                  "found by themselves)")


class SettingsError(Exception):
    """A setting is invalid; start-up stops with one line naming it."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"Invalid setting {name}: {problem}")
        self.name = name


def load_settings(env_file: str | Path | None = ".env", **overrides: object) -> Settings:
    """Read settings; turn the first pydantic error into a `SettingsError` naming the variable."""
    try:
        settings = Settings(_env_file=env_file, **overrides)  # type: ignore[arg-type, call-arg]
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]).upper() if error["loc"] else "?"
        value = os.environ.get(name, overrides.get(name.lower(), ""))
        raise SettingsError(name, f"{error['msg']} (got {value!r})") from None
    settings.check()
    return settings
