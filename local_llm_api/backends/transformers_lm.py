"""Hugging Face Transformers causal language models: a model folder (safetensors preferred), a Hub repo
id through huggingface_hub's cache, or a GGUF file read by Transformers (dequantised).

Generation runs in the dynamic batching engine (`torch_batching.py`); embeddings are the mean of the
last hidden states, L2-normalised, like the GGUF backend's.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..catalog import ModelEntry
from ..config import Settings
from ..prompting.chat_template import fallback_template
from ..structured.constraint import ConstraintFactory
from ..images import ImageInput
from .base import ModelFacts, ModelLoadError
from .engine import EngineBackend
from .hub import fetch
from .torch_vision import read_images

log = logging.getLogger("local_llm_api.transformers")

BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def import_torch() -> Any:
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:  # the Transformers extra is optional
        raise ModelLoadError(
            "torch and transformers are not installed; install the Transformers backend with "
            "`pip install local-llm-api[transformers]`"
        ) from exc
    return torch


def prepare_torch(settings: Settings) -> tuple[Any, Any, Any]:
    """(torch, device, dtype) for a model: THREADS applied, TRANSFORMERS_DEVICE and TRANSFORMERS_DTYPE with
    `auto` meaning CUDA (bf16, else fp16) when present, CPU in fp32 otherwise."""
    torch = import_torch()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    name = settings.transformers_device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"TRANSFORMERS_DEVICE={name} but torch sees no CUDA device")
    device = torch.device(name)
    dtype_name = settings.transformers_dtype
    if dtype_name == "auto":
        if device.type == "cuda":
            dtype_name = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype_name = "float32"  # half precision on CPU is slower, not faster
    return torch, device, getattr(torch, dtype_name)


def local_source(entry: ModelEntry) -> tuple[Path, str | None]:
    """(folder, gguf file name or None) for an entry, downloading a repo first."""
    spec = entry.spec
    if entry.path is not None and entry.path.exists():
        path = entry.path
    elif entry.repo is not None:
        path = fetch(entry.repo, spec.revision if spec else None, spec.file if spec else None)
    else:
        raise ModelLoadError(f"'{entry.path}' does not exist")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"'{path.name}' is neither a model folder nor a GGUF file")
        return path.parent, path.name
    return path, None


class TransformersBackend(EngineBackend):
    kind = "transformers"

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        torch, self._device, dtype = prepare_torch(settings)
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        from .torch_batching import TorchBatchEngine, can_batch
        from .torch_sampling import TokenSampler

        self._torch = torch
        spec = entry.spec
        folder, gguf_file = local_source(entry)
        trust = bool(spec and spec.trust_remote_code)
        self._processor: Any = None
        try:
            if gguf_file is None and _has_vision(folder):  # a vision model: its processor reads the images
                from transformers import AutoModelForImageTextToText, AutoProcessor

                self._processor = AutoProcessor.from_pretrained(folder, trust_remote_code=trust)
                self._tokenizer = self._processor.tokenizer
                model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype, trust_remote_code=trust)
            else:
                self._tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, trust_remote_code=trust)
                model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype, trust_remote_code=trust)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadError(f"Transformers could not load '{entry.name}': {exc}") from exc
        self._model = model.to(self._device).eval()
        config = model.config.get_text_config()
        tokenizer = self._tokenizer
        if self._processor is not None:
            self._image_token_id = _image_token_id(self._processor, model.config, entry.name)
            self.image_text = self._processor.image_token
        longest = getattr(config, "max_position_embeddings", None) or 2048
        wanted = (spec.context_size if spec and spec.context_size else None) or settings.context_size or longest
        template = (spec.chat_template if spec else None) or getattr(self._processor, "chat_template", None) or tokenizer.chat_template
        if isinstance(template, dict):  # several named templates: the default one
            template = template.get("default") or next(iter(template.values()))
        self._facts = ModelFacts(
            context_size=min(wanted, longest),
            embedding_size=config.hidden_size,
            vocab_size=len(tokenizer),
            chat_template=template or fallback_template(f"{entry.name} {getattr(config, 'model_type', '')}"),
            bos_token=tokenizer.bos_token or "",
            eos_token=tokenizer.eos_token or "",
        )
        try:
            generation_config = GenerationConfig.from_pretrained(folder)
        except OSError:
            generation_config = model.generation_config
        self._end_ids = _ids(generation_config.eos_token_id) | _ids(tokenizer.eos_token_id)
        self._token_bytes = token_bytes_function(tokenizer)
        slots = settings.parallel_slots if can_batch(model) else 1
        if slots < settings.parallel_slots:
            log.info("%s: its cache layers cannot be merged, so its sequences run one at a time", entry.name)
        vocab = model.get_output_embeddings().weight.shape[0]
        self.constraints = ConstraintFactory(lambda: _lltokenizer(tokenizer, vocab, sorted(self._end_ids)))
        self._engine = TorchBatchEngine(
            model=self._model,
            n_slots=slots,
            max_queue=settings.max_queue,
            prefill_chunk=settings.prefill_chunk,
            prefill_step_seconds=settings.prefill_step_ms / 1000,
            prefix_cache=settings.prefix_cache,
            reproducible=settings.reproducible,
            draft_tokens=settings.prompt_lookup_tokens,
            adaptive_drafts=settings.prompt_lookup_adaptive,
            make_sampler=lambda params: TokenSampler(params, vocab, self._device),
            token_bytes=self._token_bytes,
            is_end=lambda token: token in self._end_ids,
            name=entry.stem.replace("/", "--"),
            constraints=self.constraints,
        )
        self._embedder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    @property
    def facts(self) -> ModelFacts:
        return self._facts

    def _adds_bos(self, text: str) -> bool:
        """Special tokens are added unless the text starts with BOS (chat templates often write it themselves)."""
        bos = self._facts.bos_token
        return not (bos and text.startswith(bos))

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool | None = None) -> list[int]:
        add = add_special and self._adds_bos(text)
        special = add_special if parse_special is None else parse_special
        return list(self._tokenizer(text, add_special_tokens=add, split_special_tokens=not special)["input_ids"])

    def read_images(self, text: str, images: list[ImageInput]) -> tuple[list[int], object]:
        return read_images(self._processor, self._image_token_id, text, images, self._adds_bos(text))

    def control_texts(self) -> tuple[str, ...]:
        added = getattr(self._tokenizer, "added_tokens_decoder", {}) or {}
        return tuple({*self._tokenizer.all_special_tokens, *(t.content for t in added.values() if getattr(t, "special", False))})

    def token_bytes(self, token: int) -> bytes:
        return self._token_bytes(token)

    def token_piece(self, token: int) -> bytes:
        return self._token_bytes(token) or (self._tokenizer.convert_ids_to_tokens(token) or "").encode("utf-8")

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        return await asyncio.get_running_loop().run_in_executor(self._embedder, self._embed, inputs)

    def _embed(self, inputs: list[list[int]]) -> list[list[float]]:
        torch = self._torch
        vectors = []
        with torch.inference_mode():
            for tokens in inputs:
                hidden = self._model.base_model(input_ids=torch.tensor([tokens], device=self._device)).last_hidden_state
                pooled = torch.nn.functional.normalize(hidden[0].float().mean(dim=0), dim=0)
                vectors.append(pooled.tolist())
        return vectors

    async def close(self) -> None:
        await asyncio.to_thread(self._engine.close)  # the engine lets go of the model too
        self._embedder.shutdown(wait=True)
        del self._model
        gc.collect()  # the model's modules refer to each other: free them now, before the CUDA cache is emptied
        if self._device.type == "cuda":
            self._torch.cuda.empty_cache()


def _has_vision(folder: Path) -> bool:
    config = folder / "config.json"
    try:
        return isinstance(json.loads(config.read_text(encoding="utf-8")).get("vision_config"), dict)
    except (OSError, ValueError):
        return False


def _image_token_id(processor: Any, config: Any, name: str) -> int:
    """The id of the token the processor repeats for an image; 3D-position (M-RoPE) models are refused: the engine
    gives every token one position."""
    rope = getattr(config.get_text_config(), "rope_parameters", None) or getattr(config.get_text_config(), "rope_scaling", None)
    if isinstance(rope, dict) and "mrope_section" in rope:
        raise ModelLoadError(f"'{name}' places image tokens in 3D positions (M-RoPE, as Qwen2-VL does), which the "
                             "Transformers engine does not support yet; serve its GGUF with a projector instead")
    token = getattr(processor, "image_token", None)
    found = getattr(processor, "image_token_id", None)
    if found is None and token is not None:
        found = processor.tokenizer.convert_tokens_to_ids(token)
    if found is None:
        found = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
    if found is None or token is None:
        raise ModelLoadError(f"'{name}': its processor names no image token, so images cannot be placed in its prompts")
    return int(found)


def _lltokenizer(tokenizer: Any, vocab: int, end_ids: list[int]) -> Any:
    from llguidance.hf import from_tokenizer

    return from_tokenizer(tokenizer, n_vocab=vocab, eos_token=end_ids or None)


def _ids(value: int | list[int] | None) -> set[int]:
    if value is None:
        return set()
    return {value} if isinstance(value, int) else set(value)


def token_bytes_function(tokenizer: Any) -> Callable[[int], bytes]:
    """The raw bytes of a token, so that a character split over tokens is only sent once whole.

    Byte-level BPE vocabularies (GPT-2, Llama 3, Qwen, SmolLM) spell bytes as printable characters;
    SentencePiece ones write spaces as U+2581 and odd bytes as <0xNN>. Special tokens print nothing,
    as in llama.cpp.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    special = set(tokenizer.all_special_ids)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = json.loads(backend.to_str()).get("decoder") if backend is not None else None
    byte_level = "ByteLevel" in json.dumps(decoder)
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}

    @lru_cache(maxsize=None)
    def token_bytes(token: int) -> bytes:
        if token in special:
            return b""
        piece = tokenizer.convert_ids_to_tokens(token)
        if piece is None:
            return b""
        if byte_level:
            if all(char in byte_of for char in piece):
                return bytes(byte_of[char] for char in piece)
            return piece.encode("utf-8")  # an added token, stored as plain text
        match = BYTE_TOKEN.fullmatch(piece)
        if match:
            return bytes([int(match.group(1), 16)])
        return piece.replace("\u2581", " ").encode("utf-8")

    return token_bytes
