"""Images for GGUF vision models through llama.cpp's libmtmd: a text GGUF and its projector (`mmproj-*.gguf`).

libmtmd splits a prompt at its media markers into text tokens and image chunks (each picture preprocessed and
wrapped in the model's own image tokens). The engine reads the text in its batches like any prompt and each
image as a step of its own in the sequence's slot (`ImageChunk.read`: the vision tower encodes it and its
embeddings are decoded at the sequence's positions), while the other slots keep their place.

In the prompt the engine sees, an image's tokens are ids below zero drawn from the picture's content
(`image_token_ids`), so the prefix cache finds a repeated picture and never another one."""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..images import ImageInput, rgb
from .base import ModelLoadError, image_token_ids

class Projector:
    """A loaded projector: turns a prompt with images into chunks, and reads an image chunk into a sequence."""

    def __init__(self, path: Path, model: Any, threads: int, gpu: bool, batch: int) -> None:
        from llama_cpp import mtmd_cpp

        self._mtmd = mtmd_cpp
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = gpu
        params.n_threads = threads
        params.print_timings = False
        params.warmup = False
        self._ctx = mtmd_cpp.mtmd_init_from_file(str(path).encode(), model, params)
        if not self._ctx:
            raise ModelLoadError(f"llama.cpp could not load the projector '{path.name}' for this model")
        if not mtmd_cpp.mtmd_support_vision(self._ctx):
            mtmd_cpp.mtmd_free(self._ctx)
            raise ModelLoadError(f"'{path.name}' is not a vision projector (it reads no images)")
        self.marker = (mtmd_cpp.mtmd_default_marker() or b"<__media__>").decode()
        self._batch = batch
        self._lock = threading.Lock()  # libmtmd's context is not shared between threads at once

    def tokenize(self, text: str, images: list[ImageInput], add_special: bool) -> tuple[list[int], LlamaImages]:
        """The prompt's tokens (an image's as content ids) and its image chunks, by the position each starts at."""
        mtmd = self._mtmd
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * len(images))()
        for i, image in enumerate(images):
            picture = rgb(image)
            pixels = picture.tobytes()
            bitmaps[i] = mtmd.mtmd_bitmap_init(picture.width, picture.height,
                                               (ctypes.c_uint8 * len(pixels)).from_buffer_copy(pixels))
        chunks = mtmd.mtmd_input_chunks_init()
        media = LlamaImages(self, chunks)
        encoded = text.encode("utf-8")
        prompt = mtmd.mtmd_input_text(encoded, len(encoded), add_special, True)
        try:
            with self._lock:
                code = mtmd.mtmd_tokenize(self._ctx, chunks, ctypes.byref(prompt), bitmaps, len(images))
        finally:
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)
        if code != 0:
            raise ValueError(f"libmtmd could not place the images in the prompt (code {code})")
        tokens: list[int] = []
        pictures = iter(images)
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            kind = mtmd.mtmd_input_chunk_get_type(chunk)
            if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                ids = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                tokens += ids[: n.value]
                continue
            count = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            if mtmd.mtmd_input_chunk_get_n_pos(chunk) != count:
                raise ValueError("this model places image tokens in positions of their own (M-RoPE), which the engine "
                                 "does not support yet")
            media.chunks_at[len(tokens)] = ImageChunk(chunk, count)
            tokens += image_token_ids(next(pictures).digest, count)
        return tokens, media

    def read(self, chunk: ImageChunk, context: Any, position: int, seq_id: int) -> None:
        """Encode the image and decode its embeddings into sequence `seq_id` from `position` (engine thread)."""
        after = ctypes.c_int32(0)  # llama_pos: where the sequence stands after it
        with self._lock:
            code = self._mtmd.mtmd_helper_eval_chunk_single(self._ctx, context, chunk.pointer, position, seq_id,
                                                            self._batch, False, ctypes.byref(after))
        if code != 0:
            raise RuntimeError(f"libmtmd could not read an image (code {code})")

    def close(self) -> None:
        if self._ctx:
            self._mtmd.mtmd_free(self._ctx)
            self._ctx = None


@dataclass(eq=False)
class ImageChunk:
    pointer: Any  # libmtmd's chunk, owned by the prompt's chunk list
    tokens: int


@dataclass(eq=False)
class LlamaImages:
    """A prompt's image chunks, freed with it."""

    projector: Projector
    chunks: Any
    chunks_at: dict[int, ImageChunk] = field(default_factory=dict)  # by the position the image starts at

    def __del__(self) -> None:
        if self.chunks:
            self.projector._mtmd.mtmd_input_chunks_free(self.chunks)
            self.chunks = None
