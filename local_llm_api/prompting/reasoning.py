"""Thinking models: how a family marks its reasoning, read from the chat template; how to turn thinking off or
set its effort through the template's own variables; and the streaming splitter that separates reasoning from
the answer, the same whether the text comes whole or in any chunks.

A template may open the reasoning block itself at the end of the generation prompt (DeepSeek R1's distills,
Qwen3's thinking variants): the answer then starts inside it, which `starts_inside` reads off the rendered prompt.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from .chat_template import TemplateInfo

_SEAL = "lla1."


def seal(reasoning: str) -> str:
    """Reasoning as an opaque string a client sends back (Responses' `encrypted_content`, Anthropic's `signature`),
    so that a stateless client's next turn still holds it. Not secret: it is the client's own text."""
    return _SEAL + base64.urlsafe_b64encode(zlib.compress(reasoning.encode("utf-8"))).decode("ascii")


def unseal(value: str | None) -> str | None:
    """The reasoning a sealed string holds; None for anything else (another server's signature, a forgery)."""
    if not value or not value.startswith(_SEAL):
        return None
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(base64.urlsafe_b64decode(value[len(_SEAL):]), 1 << 22)  # at most 4 MB: no bomb
        return None if inflater.unconsumed_tail else text.decode("utf-8")
    except (ValueError, zlib.error, binascii.Error):
        return None


@dataclass(frozen=True)
class ReasoningFormat:
    name: str
    open: str
    close: str
    answer_prefix: str = ""  # text that opens the answer after the block (gpt-oss's final channel), dropped
    answer_suffix: str = ""  # text that closes the answer (Apriel's "[END FINAL RESPONSE]"), dropped
    empty_block: str = ""  # what to append to a prompt so that the model answers without thinking

    def starts_inside(self, generation_prompt: str) -> bool:
        """Whether the generation prompt (the text after the last message) opened a reasoning block."""
        opened = generation_prompt.rfind(self.open)
        return opened >= 0 and generation_prompt.find(self.close, opened + len(self.open)) < 0

    def closing(self, generation_prompt: str) -> str:
        """What to append to a prompt so that the answer comes without reasoning: the close marker where the
        generation prompt opened a block, nothing where it holds a closed one (the template's own switch did it),
        else an empty block."""
        if self.starts_inside(generation_prompt):
            return self.close + ("\n\n" if self.name == "think" else "")
        if self.open in generation_prompt:
            return ""
        return self.empty_block


THINK = ReasoningFormat("think", "<think>", "</think>", empty_block="<think>\n\n</think>\n\n")
SEED = ReasoningFormat("seed", "<seed:think>", "</seed:think>", empty_block="<seed:think>\n</seed:think>\n")
MAGISTRAL = ReasoningFormat("magistral", "[THINK]", "[/THINK]", empty_block="[THINK][/THINK]")
COMMAND_R = ReasoningFormat("command-r", "<|START_THINKING|>", "<|END_THINKING|>", answer_prefix="<|START_RESPONSE|>",
                            answer_suffix="<|END_RESPONSE|>", empty_block="<|START_THINKING|><|END_THINKING|>")
KIMI = ReasoningFormat("kimi", "◁think▷", "◁/think▷", empty_block="◁think▷◁/think▷")
HARMONY = ReasoningFormat("harmony", "<|channel|>analysis<|message|>", "<|end|>",
                          answer_prefix="<|start|>assistant<|channel|>final<|message|>",
                          empty_block="<|channel|>analysis<|message|><|end|><|start|>assistant<|channel|>final<|message|>")
APRIEL = ReasoningFormat("apriel", "Here are my reasoning steps:", "[BEGIN FINAL RESPONSE]", answer_suffix="[END FINAL RESPONSE]",
                         empty_block="Here are my reasoning steps:\n[BEGIN FINAL RESPONSE]")

# More specific markers first: a template that mentions "<seed:think>" also holds "think>".
FORMATS = (HARMONY, SEED, MAGISTRAL, COMMAND_R, KIMI, APRIEL, THINK)
# Where a template reads one of these, thinking is switched (or its effort set) through it.
SWITCHES = ("enable_thinking", "thinking")
EFFORT_VARIABLE = "reasoning_effort"


def reasoning_format(info: TemplateInfo, override: str | None = None) -> ReasoningFormat | None:
    """The model's reasoning markers: from MODELS_CONFIG's `reasoning` (`none`, or `<open>,<close>`), else the
    first family whose markers the template holds (`auto`)."""
    if override is not None and override != "auto":
        if override == "none":
            return None
        open_marker, close_marker = (part.strip() for part in override.split(",", 1))
        return ReasoningFormat("custom", open_marker, close_marker, empty_block=open_marker + close_marker)
    markers = {HARMONY.name: "<|channel|>", APRIEL.name: "[BEGIN FINAL RESPONSE]"}
    for fmt in FORMATS:
        if markers.get(fmt.name, fmt.open) in info.literals and (fmt is HARMONY or fmt.close in info.literals):
            return fmt
    return None


def template_variables(info: TemplateInfo, effort: str | None) -> dict[str, object]:
    """The template's own thinking switches for an effort on the one scale (none ... max); None: its defaults."""
    if effort is None:
        return {}
    out: dict[str, object] = {name: effort != "none" for name in SWITCHES if name in info.variables}
    if EFFORT_VARIABLE in info.variables and effort != "none":
        out[EFFORT_VARIABLE] = {"minimal": "low", "xhigh": "high", "max": "high"}.get(effort, effort)
    return out


class ReasoningSplitter:
    """Splits an answer, streamed, into reasoning and content. Reasoning is a block at the start of the answer
    (or, when the prompt opened it, from the first token); a marker is never part of either text, and text that
    may be the start of a marker is held until it is known. An unclosed block is reasoning to the end; one of
    `ends` (a tool call's opening) ends it as if closed, and stays in the content."""

    def __init__(self, fmt: ReasoningFormat, *, inside: bool, ends: tuple[str, ...] = ()) -> None:
        self._format = fmt
        self._ends = tuple(end for end in ends if end)
        self._state = "inside" if inside else "start"  # start -> inside -> after -> content (-> over) | start -> content
        self._held = ""

    @property
    def reasoning(self) -> bool:
        """Whether the text so far ends inside the reasoning block."""
        return self._state == "inside"

    def push(self, text: str) -> tuple[str, str]:
        """(reasoning, content) that can be sent now."""
        self._held += text
        reasoning = content = ""
        while True:
            if self._state == "start":
                stripped = self._held.lstrip()
                if stripped.startswith(self._format.open):
                    self._held = stripped[len(self._format.open):]
                    self._state = "inside"
                    continue
                if stripped and not self._format.open.startswith(stripped):
                    self._state = "content"
                    continue
                return reasoning, content
            if self._state == "inside":
                end, after = self._block_end()
                if end is None:
                    keep = partial_suffix(self._held, (self._format.close, *self._ends))
                    reasoning += self._held[: len(self._held) - keep]
                    self._held = self._held[len(self._held) - keep:]
                    return reasoning, content
                reasoning += self._held[:end]
                self._held = self._held[after:]
                self._state = "after"
                continue
            if self._state == "after":  # drop the answer's own opening (and the blank line after the block)
                stripped = self._held.lstrip()
                prefix = self._format.answer_prefix
                if prefix and (stripped.startswith(prefix) or prefix.startswith(stripped)):
                    if not stripped.startswith(prefix):
                        return reasoning, content
                    stripped = stripped[len(prefix):]
                if not stripped:
                    self._held = ""
                    return reasoning, content
                self._held = stripped
                self._state = "content"
                continue
            suffix = self._format.answer_suffix
            if suffix and suffix in self._held:  # the answer's closing: it and what follows are dropped
                content += self._held[: self._held.index(suffix)]
                self._held, self._state = "", "over"
                return reasoning, content
            keep = partial_suffix(self._held, (suffix,)) if suffix else 0
            content += self._held[: len(self._held) - keep]
            self._held = self._held[len(self._held) - keep:]
            return reasoning, content

    def _block_end(self) -> tuple[int | None, int]:
        """Where the reasoning in `_held` ends, and where what follows it starts (a tool call's opening stays)."""
        close = self._held.find(self._format.close)
        ends = [(at, at) for end in self._ends if (at := self._held.find(end)) >= 0]
        found = ([(close, close + len(self._format.close))] if close >= 0 else []) + ends
        return min(found) if found else (None, 0)

    def finish(self) -> tuple[str, str]:
        """At the end: what is still held, as reasoning (an unclosed block) or content."""
        held, self._held = self._held, ""
        if self._state == "inside":
            return held, ""
        if self._state == "over":
            return "", ""
        if self._state == "start" and self._format.open.startswith(held.strip()) and held.strip():
            return "", held  # a lone beginning of a marker that never came: it was text
        return "", held if self._state in ("content", "start") else held.lstrip()


def partial_suffix(text: str, markers: Sequence[str]) -> int:
    """How many characters at the end of `text` may begin one of `markers`."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest
