"""Images for Transformers vision models (`AutoModelForImageTextToText` with its processor): the processor expands
each image's place in the prompt into its tokens and makes the pixel inputs; the engine reads the prompt as
embeddings, with the vision tower's features at the image tokens, in the same chunks as any prompt.

The prompt the engine sees holds, at each image token, an id below zero drawn from the picture's content
(`image_token_ids`), so the prefix cache matches a repeated image and never a different one; `history` holds the real
ids (repetition penalties, prompt lookup, positions)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from ..images import ImageInput, rgb
from .base import image_token_ids

# Processor outputs that are not the vision tower's inputs.
TEXT_KEYS = {"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"}


@dataclass
class TorchImages:
    """A prompt's images as the processor made them, and where their tokens stand."""

    inputs: dict[str, Any]  # pixel_values and whatever else the processor gave for the vision tower
    image_token_id: int
    history: list[int]  # the prompt with its real ids
    count: int  # images

    def reads_from(self, start: int) -> bool:
        """Whether any image token lies at or after `start` (else the cached prefix holds them all)."""
        return any(t == self.image_token_id for t in self.history[start:])


def read_images(processor: Any, image_token_id: int, text: str, images: list[ImageInput],
                add_special: bool) -> tuple[list[int], TorchImages]:
    """The prompt's tokens (image tokens as content ids) and its pixel inputs."""
    encoded = processor(text=[text], images=[rgb(image) for image in images], return_tensors="pt",
                        add_special_tokens=add_special)
    real = [int(t) for t in encoded["input_ids"][0]]
    runs = _runs(real, image_token_id)
    tokens = list(real)
    if len(runs) == len(images):  # one run of tokens per image: each keyed by its own picture
        for (start, end), image in zip(runs, images):
            tokens[start:end] = image_token_ids(image.digest, end - start)
    else:  # images split in tiles around other markers: every image token keyed by all the pictures
        key = "".join(image.digest for image in images)
        places = [i for i, t in enumerate(real) if t == image_token_id]
        for i, value in zip(places, image_token_ids(key, len(places))):
            tokens[i] = value
    inputs = {k: v for k, v in encoded.items() if k not in TEXT_KEYS}
    return tokens, TorchImages(inputs, image_token_id, real, len(images))


def prompt_embeddings(model: Any, media: TorchImages) -> Any:
    """The whole prompt as input embeddings: the text's, and the vision tower's features at the image tokens."""
    import torch

    device = model.device
    ids = torch.tensor([media.history], device=device)
    embeddings = model.get_input_embeddings()(ids)
    accepted = inspect.signature(model.get_image_features).parameters
    inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in media.inputs.items() if k in accepted}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(embeddings.dtype)
    features = model.get_image_features(**inputs)
    features = getattr(features, "pooler_output", features)
    if isinstance(features, (list, tuple)):
        features = torch.cat([f.reshape(-1, f.shape[-1]) for f in features], dim=0)
    features = features.reshape(-1, features.shape[-1]).to(embeddings.dtype)
    mask = ids[0] == media.image_token_id
    if int(mask.sum()) != features.shape[0]:
        raise ValueError(f"the vision tower gave {features.shape[0]} image features for {int(mask.sum())} image tokens")
    embeddings[0, mask] = features
    return embeddings


def _runs(tokens: list[int], token: int) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i, t in enumerate(tokens):
        if t != token:
            continue
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs
