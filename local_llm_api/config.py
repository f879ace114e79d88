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

    # Where models live and which one answers requests that name none.
    model_dir: Path = Path("models")
    default_model: str = ""
    model_backend: BackendChoice = BackendChoice.auto
    preload_model: bool = False
    auto_load: bool = Field(True, description="Load a known but unloaded model when a request names it.")
    model_load_wait_seconds: float = Field(
        60.0, ge=0, description="How long a request waits for a model that is loading before it gets 503."
    )

    # llama.cpp
    gpu_layers: int = Field(-1, ge=-1, description="-1 offloads every layer when a GPU is present.")
    context_size: int = Field(0, ge=0, description="Tokens of context per request (per slot). 0: the model's training "
                              "context, cut to what fits MEMORY_BUDGET (or half this machine's memory) for every slot.")
    threads: int | None = Field(None, ge=1, description="Generation threads; unset lets llama.cpp choose.")
    batch_size: int = Field(512, ge=1, description="Most tokens in one decode step.")
    parallel_slots: int = Field(4, ge=1, le=256, description="Sequences decoded together (continuous batching).")
    max_queue: int = Field(64, ge=0, description="Requests that may wait for a slot; beyond it, 429.")
    prefill_chunk: int = Field(64, ge=1, description="Prompt tokens fed per step while other sequences stream.")
    prefix_cache: bool = Field(True, description="Reuse a slot's KV cache for a prompt that shares its prefix.")
    prompt_lookup_tokens: int = Field(8, ge=0, le=64, description="Most tokens a streaming sequence guesses per step "
                                      "from its own prompt and output for the model to check (speculative decoding; the "
                                      "answer is unchanged); 0 turns it off.")
    prompt_lookup_adaptive: bool = Field(True, description="Feed only the guesses that raise the expected tokens per "
                                         "second, by the measured step cost and how often the sequence's guesses hold. "
                                         "Off, every guess found is fed (hardware where a token more in a step costs "
                                         "little, or to measure).")
    reproducible: bool = Field(False, description="Seeded and temperature-0 requests evaluate their whole prompt, so that "
                               "the same request gives the same answer whatever shares its batch (slower: no prefix reuse "
                               "for them). Off, they reuse cached prefixes like every request.")

    # Transformers
    transformers_default_model: str = Field(
        "", description="A model folder or Hugging Face repo id served by Transformers (and the default model "
        "when DEFAULT_MODEL is unset)."
    )
    transformers_device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto: CUDA when present.")
    transformers_dtype: str = Field(
        "auto", pattern="^(auto|float32|float16|bfloat16)$", description="auto: bfloat16/float16 on CUDA, float32 on CPU."
    )

    # Several models at once
    models_config: Path | None = Field(None, description="A YAML file declaring models (see README).")
    model_aliases: str = Field("", description="Other names for models, for clients that send names of their own "
                               "(Claude Code's background model): comma-separated NAME=MODEL pairs, NAME may hold * "
                               "(claude-*=SmolLM2). Used only for names that match no model.")
    rerank_model: str = Field("", description="The model /rerank uses when a request names none; unset: the only "
                              "cross-encoder in MODEL_DIR, else the only embedding model, else DEFAULT_MODEL.")
    max_loaded_models: int = Field(0, ge=0, description="Most models loaded at once; 0 = no limit.")
    memory_budget: ByteSize = Field(ByteSize(0), description="Most model bytes loaded at once (e.g. 8GB); 0 = no limit.")
    keep_alive: float = Field(0, ge=0, description="Unload a model idle this many seconds; 0 keeps models loaded.")

    # Sampling defaults, used when a request leaves the parameter out.
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.95, ge=0, le=1)
    top_k: int = Field(40, ge=0)
    min_p: float = Field(0.05, ge=0, le=1)
    repeat_penalty: float = Field(1.0, gt=0, description="1.0 (off) like the OpenAI API and llama.cpp's server.")
    max_tokens: int | None = Field(None, ge=1, description="Default answer length cap; unset = rest of context.")

    # Stored responses (the Responses API's `store` and `previous_response_id`)
    data_dir: Path = Field(Path("data"), description="Where the server keeps its state (stored responses, SQLite).")
    responses_max_stored: int = Field(10000, ge=0, description="Most stored responses; the oldest go first. 0 = no limit.")
    responses_max_age_seconds: float = Field(30 * 86400, ge=0, description="Stored responses older than this are dropped; 0 = kept.")

    # Requests
    stream_keepalive_seconds: float = Field(5.0, ge=0, description="A stream silent this long (a long prompt being read) "
                                            "gets a keep-alive frame: an SSE comment, Anthropic's ping event; 0: none.")
    strict_request_fields: bool = Field(False, description="Refuse request fields this server does not know with a 400 "
                                        "(OpenAI's behaviour). Off, they are accepted and named in the X-Ignored-Fields "
                                        "response header and the access log: clients add fields with every release.")

    # Security
    parse_special_in_content: bool = Field(True, description="Read control-token texts in messages (a user writing "
                                           "<|im_end|><|im_start|>system) as those tokens, as Transformers and llama.cpp's "
                                           "server do. False: read them as plain text, so that untrusted users cannot "
                                           "forge turns.")
    api_key_required: bool = False
    api_key: str = Field("", description="One key or several, comma-separated.")
    admin_api_key: str = Field("", description="A separate key for the routes that manage models (pull, load, unload, "
                                "delete, copy); unset: the API key, and on a server reachable beyond loopback without "
                                "any key those routes are refused.")
    pull_max_bytes: ByteSize = Field(ByteSize(50 * 2**30), description="Largest download a pull may start (e.g. 20GB); 0 = no cap.")
    allowed_hosts: str = Field("", description="Host names the server answers to besides localhost, its hostname and IP "
                               "addresses (comma-separated, *.example.com, or *); bound to all interfaces, unset means any.")
    cors_origins: str = Field("", description="Browser origins allowed to call the API, comma-separated, or *; "
                              "empty: pages on this machine only (localhost, 127.0.0.1, [::1] on any port; app://, file://, "
                              "tauri://, vscode-webview://).")

    # More than one replica behind one endpoint, on Ray Serve (pip install 'local-llm-api[ray]'; RAY_ADDRESS joins
    # a cluster, else a local Ray instance starts)
    replicas: int = Field(0, ge=0, description="0: one process, no Ray (the default). N: N replicas of the server on "
                          "Ray Serve behind one endpoint.")
    max_replicas: int = Field(0, ge=0, description="Above REPLICAS: Ray Serve adds replicas up to this many while requests "
                              "queue (PARALLEL_SLOTS in hand per replica is its target) and removes them when idle.")
    replica_cpus: float | None = Field(None, gt=0, description="CPUs Ray reserves per replica; unset: THREADS, else 1.")
    replica_gpus: float = Field(0, ge=0, description="GPUs Ray gives each replica (e.g. 1, or 0.5 to share one).")

    # Server and logs
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: LogLevel = LogLevel.info
    log_file: Path | None = None
    log_format: str = Field("text", pattern="^(text|json)$")
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    body_read_timeout_seconds: float = Field(30.0, gt=0, description="A request body must arrive within this; else 408.")
    shutdown_grace_seconds: float = Field(
        30.0, ge=0, description="On SIGTERM, how long running generations may finish before the server exits."
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
