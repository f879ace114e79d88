"""A tiny GGUF whose answers are certain: the agent tests' model.

A 135M model will not choose to call a tool, and the real clients send prompts of 9,000-20,000 tokens that
SmolLM2 reads for minutes on two cores. This model reads them in seconds and writes what the test scripted.

How: one transformer layer whose attention and feed-forward weights are zero, so the hidden state is the
embedding of the last token, and the output layer maps that token to the next one (a bigram table). The
vocabulary is SmolLM2's (the prompt tokenizes as with the real model) plus a few whole-text tokens: markers
that the chat template puts at the end of the prompt to pick a script, and the scripted answers, one token each
(so that no token has two successors). Every token that is not in a script leads to the end of the turn.

The chat template (our own, ChatML-shaped, rendering tools, calls and results as Qwen 2.5 does) picks the
script from the last turn that is not a system one (Claude Code puts system turns after the user's): after a
tool result, the "after" answer; when that turn is the user's and holds `TRIGGER`, the tool call; otherwise
the plain answer. Everything else on the path (the client, the server,
the template, the tool-call parser, the client's own tool runner) is real.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from local_llm_api.cli import bundled_model_path

TRIGGER = "use-the-tool"
MARK_TEXT, MARK_CALL, MARK_AFTER = "<|script:text|>", "<|script:call|>", "<|script:after|>"
END = "<|im_end|>"

TEMPLATE = """\
{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}# Tools

You may call one or more functions to assist with the user query.

<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags.<|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' and loop.first %}
{%- elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% elif message.role == 'assistant' %}<|im_start|>assistant
{{ message.content or '' }}
{%- for call in message.tool_calls or [] %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% set turns = messages | rejectattr('role', 'equalto', 'system') | list %}{% set last = turns[-1] %}
{%- if last.role == 'tool' %}<|script:after|>
{%- elif last.role == 'user' and '""" + TRIGGER + """' in (last.content if last.content is string else last.content | map(attribute='text') | join(' ')) %}<|script:call|>
{%- else %}<|script:text|>
{%- endif %}
{%- endif %}"""


@dataclass(frozen=True)
class Script:
    """What the model writes: `text` for a plain turn, `call` when the user asks for the tool (a tool call in the
    Hermes format the template teaches, or any text: aider's file edit), `after` once the tool's result is back."""

    text: str = "Hello from the scripted model."
    call: str = ""
    after: str = "The tool ran."


def tool_call(name: str, **arguments: object) -> str:
    """A call as a Hermes / Qwen 2.5 model writes it, which the server parses into the API's tool call."""
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def build(path: Path, script: Script, context_length: int = 65536) -> Path:
    """The agent tests' model: three scripts chosen by the template's markers."""
    call = script.call or tool_call("none")
    chains = [(MARK_TEXT, script.text), (MARK_CALL, call), (MARK_AFTER, script.after)]
    return build_model(path, chains, TEMPLATE, context_length=context_length, control=(MARK_TEXT, MARK_CALL, MARK_AFTER))


@lru_cache(maxsize=1)
def smollm2_vocabulary() -> tuple[list[str], list[int], list[str]]:
    """SmolLM2's tokens, token types and merges, read once (a few seconds)."""
    import gguf

    source = gguf.GGUFReader(bundled_model_path())
    tokens = [bytes(source.fields["tokenizer.ggml.tokens"].parts[i]).decode("utf-8")
              for i in source.fields["tokenizer.ggml.tokens"].data]
    types = [int(source.fields["tokenizer.ggml.token_type"].parts[i][0]) for i in source.fields["tokenizer.ggml.token_type"].data]
    merges = [bytes(source.fields["tokenizer.ggml.merges"].parts[i]).decode("utf-8")
              for i in source.fields["tokenizer.ggml.merges"].data]
    return tokens, types, merges


def build_model(path: Path, chains: list[tuple[str | int, ...]], template: str, *, context_length: int = 65536,
                control: tuple[str, ...] = (), otherwise: str | None = None) -> Path:
    """A model that writes each chain: its first token (a new whole-text token, or an id of SmolLM2's vocabulary)
    is followed by the second, and so on; the last by the end of the turn, as is every token in no chain (or, with
    `otherwise`, the first token of that chain: then whatever the prompt ends with, the model writes it). Texts
    are added to the vocabulary (as control tokens when in `control`, else as user-defined ones, which the
    tokenizer matches in any text); a text in several chains must have the same successor in each."""
    import gguf

    base_tokens, base_types, merges = smollm2_vocabulary()
    tokens, types = list(base_tokens), list(base_types)
    known = {text: i for i, text in enumerate(base_tokens)}
    ids: dict[str | int, int] = {}
    for chain in chains:
        for item in chain:
            if isinstance(item, int):
                ids[item] = item
            elif item in known:  # a text the vocabulary has (it takes no text twice)
                ids[item] = known[item]
            elif item not in ids:
                ids[item] = len(tokens)
                tokens.append(item)
                types.append(gguf.TokenType.CONTROL if item in control else gguf.TokenType.USER_DEFINED)
    end = tokens.index(END)
    successors: dict[int, int] = {}
    for chain in chains:
        for token, successor in zip([ids[i] for i in chain], [*(ids[i] for i in chain[1:]), end], strict=True):
            assert successors.setdefault(token, successor) == successor, f"token {token} has two successors"

    width, vocab = 64, len(tokens)
    assert len(successors) < width, "too many scripted tokens for the model's width"
    # Direction 0 stands for "any other token"; each token with a scripted successor has a direction of its own.
    embeddings = np.zeros((vocab, width), np.float32)
    embeddings[:, 0] = 1.0
    output = np.zeros((vocab, width), np.float32)
    output[ids[otherwise] if otherwise is not None else end, 0] = 10.0
    for direction, (token, successor) in enumerate(successors.items(), start=1):
        embeddings[token] = 0.0
        embeddings[token, direction] = 1.0
        output[successor, direction] = 10.0  # after RMS norm the hidden state is 8 along it: a logit of 80

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("scripted-model")
    writer.add_context_length(context_length)
    writer.add_embedding_length(width)
    writer.add_block_count(1)
    writer.add_feed_forward_length(width)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_rope_dimension_count(width // 2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(end)
    writer.add_add_bos_token(False)
    writer.add_chat_template(template)
    zero = np.zeros
    writer.add_tensor("token_embd.weight", embeddings)
    writer.add_tensor("output_norm.weight", np.ones(width, np.float32))
    writer.add_tensor("output.weight", output)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(width, np.float32))
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(width, np.float32))
    writer.add_tensor("blk.0.attn_q.weight", zero((width, width), np.float32))
    writer.add_tensor("blk.0.attn_k.weight", zero((width // 2, width), np.float32))
    writer.add_tensor("blk.0.attn_v.weight", zero((width // 2, width), np.float32))
    writer.add_tensor("blk.0.attn_output.weight", zero((width, width), np.float32))
    writer.add_tensor("blk.0.ffn_gate.weight", zero((width, width), np.float32))
    writer.add_tensor("blk.0.ffn_up.weight", zero((width, width), np.float32))
    writer.add_tensor("blk.0.ffn_down.weight", zero((width, width), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
