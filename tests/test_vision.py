"""Images in, on a real (tiny, random-weight) LLaVA-shaped vision model served by the Transformers backend, through
every API and its official SDK: the image reaches the model (its tokens are counted, two pictures give different
first-token log probabilities, a repeated one comes from the prefix cache), every API's image shape is accepted,
and every bad image is a 400 in the route's envelope while the server keeps serving. A text-only model refuses images.
"""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import anthropic
import httpx
import ollama
import openai
import pytest
from PIL import Image

from local_llm_api.images import ImageInput, ImageLimits, _check_target
from local_llm_api.errors import APIError

from .conftest import MODEL, Server, start_server, stop_server
from .models import TINY_LLAVA, place_tree, tiny_llava_folder, tiny_llava_gguf

GGUF_LLAVA = "tiny-llava-gguf.gguf"


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 30), kind: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, kind)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{b64(data)}"


RED, BLUE, GREEN = png((255, 0, 0)), png((0, 0, 255)), png((0, 160, 0), kind="JPEG")


def huge_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a 1x1 picture's header rewritten): refused before decoding."""
    data = bytearray(png((1, 2, 3), (1, 1)))
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = header[4:]
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


@dataclass
class Vision:
    """The server, and the tiny vision model on one backend: its name and the tokens it gives one image."""

    server: Server
    model: str
    image_tokens: int

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server with the tiny vision model twice: its Transformers folder, and its GGUF with the projector beside."""
    directory = tmp_path_factory.mktemp("vision-models")
    place_tree(tiny_llava_folder(), directory / TINY_LLAVA)
    model, projector = tiny_llava_gguf()
    place_tree(model, directory / GGUF_LLAVA)
    place_tree(projector, directory / f"mmproj-{GGUF_LLAVA}")
    srv = start_server(tmp_path_factory.mktemp("vision-server"), directory, DEFAULT_MODEL=TINY_LLAVA, MAX_IMAGES="3",
                       IMAGE_URL_FETCH="*", PARALLEL_SLOTS="2", REPRODUCIBLE="false")  # greedy requests reuse the cache
    yield srv
    stop_server(srv)


# 17 image tokens in Transformers (4x4 patches and the class token); llama.cpp's `mlp` projector drops the class token.
@pytest.fixture(scope="module", params=[(TINY_LLAVA, 17), (GGUF_LLAVA, 16)], ids=["transformers", "llama-cpp"])
def vision(request: pytest.FixtureRequest, vision_server: Server) -> Vision:
    return Vision(vision_server, *request.param)


@pytest.fixture
def client(vision: Vision) -> Iterator[httpx.Client]:
    with vision.server.client() as c:
        c.model = vision.model  # type: ignore[attr-defined]  (the model every request of the test names)
        yield c


def chat(client: httpx.Client, content: list[dict], **fields: object) -> httpx.Response:
    model = getattr(client, "model", None)
    return client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}], "max_tokens": 2,
                                                      "temperature": 0, **({"model": model} if model else {}), **fields})


def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": data_uri(data), "detail": "low"}}


def first_logprobs(client: httpx.Client, image: bytes) -> dict[str, float]:
    body = chat(client, [image_part(image), {"type": "text", "text": "What is this?"}], logprobs=True, top_logprobs=5).json()
    return {t["token"]: round(t["logprob"], 4) for t in body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]}


def engine(client: httpx.Client) -> dict:
    return client.get("/health").json()["engines"][client.model]  # type: ignore[attr-defined]


# ---------------------------------------------------------------- the image reaches the model


def test_vision_is_listed_as_a_capability(vision: Vision, client: httpx.Client, server: Server) -> None:
    listed = {m["id"]: m["capabilities"] for m in client.get("/v1/models").json()["data"]}
    assert "vision" in listed[vision.model]
    assert "vision" in {m["id"]: m["capabilities"] for m in client.get("/models").json()["data"]}[vision.model]
    assert "vision" in client.post("/api/show", json={"model": vision.model}).json()["capabilities"]
    with server.client() as text_only:
        assert "vision" not in {m["id"]: m["capabilities"] for m in text_only.get("/v1/models").json()["data"]}[MODEL]
        assert "vision" not in text_only.post("/api/show", json={"model": MODEL}).json()["capabilities"]


def test_image_tokens_are_counted(vision: Vision, client: httpx.Client) -> None:
    text = chat(client, [{"type": "text", "text": "What is this?"}]).json()["usage"]["prompt_tokens"]
    one = chat(client, [image_part(RED), {"type": "text", "text": "What is this?"}]).json()["usage"]["prompt_tokens"]
    two = chat(client, [image_part(RED), image_part(BLUE), {"type": "text", "text": "What is this?"}]).json()["usage"]
    assert one == text + vision.image_tokens
    assert two["prompt_tokens"] == text + 2 * vision.image_tokens


def test_different_pictures_give_different_answers_and_a_repeated_one_is_cached(vision: Vision, client: httpx.Client) -> None:
    red = first_logprobs(client, RED)
    blue = first_logprobs(client, BLUE)
    assert red != blue  # the picture reached the model
    encoded = engine(client)["images_encoded_total"]
    again = chat(client, [image_part(RED), {"type": "text", "text": "What is this?"}], logprobs=True, top_logprobs=5).json()
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > vision.image_tokens  # the image's tokens came from cache
    assert engine(client)["images_encoded_total"] == encoded  # and the tower did not run again
    assert {t["token"]: round(t["logprob"], 4) for t in again["choices"][0]["logprobs"]["content"][0]["top_logprobs"]} == red
    # The same prompt with another picture shares only the text before it: never the cached image.
    green = chat(client, [image_part(GREEN), {"type": "text", "text": "What is this?"}]).json()
    assert green["usage"]["prompt_tokens_details"]["cached_tokens"] < vision.image_tokens
    assert engine(client)["images_encoded_total"] == encoded + 1
    assert f'llm_images_encoded_total{{model="{vision.model}"}} {encoded + 1}.0' in client.get("/metrics").text


def test_a_later_turn_reads_only_what_is_new(vision: Vision, client: httpx.Client) -> None:
    first = [{"role": "user", "content": [image_part(BLUE), {"type": "text", "text": "Describe it."}]}]
    answer = client.post("/v1/chat/completions", json={"model": vision.model, "messages": first, "max_tokens": 4,
                                                       "temperature": 0}).json()
    encoded = engine(client)["images_encoded_total"]
    follow = first + [{"role": "assistant", "content": answer["choices"][0]["message"]["content"]},
                      {"role": "user", "content": "And the colour?"}]
    second = client.post("/v1/chat/completions", json={"model": vision.model, "messages": follow, "max_tokens": 2,
                                                       "temperature": 0}).json()
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > answer["usage"]["prompt_tokens"] - 2
    assert engine(client)["images_encoded_total"] == encoded


def test_tokenize_and_apply_template_show_the_images(vision: Vision, client: httpx.Client) -> None:
    messages = [{"role": "user", "content": [image_part(RED), {"type": "text", "text": "What is this?"}]}]
    rendered = client.post("/apply-template", json={"model": vision.model, "messages": messages}).json()["prompt"]
    assert rendered.count("<image>" if vision.model == TINY_LLAVA else "<__media__>") == 1  # the processor's, or libmtmd's
    tokenized = client.post("/tokenize", json={"model": vision.model, "messages": messages, "with_pieces": True}).json()
    usage = chat(client, messages[0]["content"]).json()["usage"]
    assert tokenized["count"] == usage["prompt_tokens"]
    # Image tokens by the model's own id (Transformers) or as -1 (llama.cpp has none for them), shown as <image>.
    assert [p["piece"] for p in tokenized["tokens"]].count("<image>") == vision.image_tokens


# ---------------------------------------------------------------- every API's shape, through the official SDKs


def test_openai_sdk_chat_streamed_and_not(vision: Vision) -> None:
    sdk = openai.OpenAI(base_url=vision.url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is in the picture?"},
                                             {"type": "image_url", "image_url": {"url": data_uri(GREEN, "image/jpeg")}}]}]
    done = sdk.chat.completions.create(model=vision.model, messages=messages, max_tokens=3)
    assert done.usage.prompt_tokens > vision.image_tokens
    stream = sdk.chat.completions.create(model=vision.model, messages=messages, max_tokens=3, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage.prompt_tokens == done.usage.prompt_tokens
    # Bare base64 (no data: prefix) is read too, as llama.cpp's server and vLLM do.
    bare = sdk.chat.completions.create(model=vision.model, max_tokens=1, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": b64(GREEN)}}, {"type": "text", "text": "What is in the picture?"}]}])
    assert bare.usage.prompt_tokens == done.usage.prompt_tokens


def test_openai_sdk_responses(vision: Vision) -> None:
    sdk = openai.OpenAI(base_url=vision.url + "/v1", api_key="unused", max_retries=0)
    content = [{"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": data_uri(RED), "detail": "auto"}]
    response = sdk.responses.create(model=vision.model, input=[{"role": "user", "content": content}], max_output_tokens=16)
    assert response.usage.input_tokens > vision.image_tokens
    events = list(sdk.responses.create(model=vision.model, input=[{"role": "user", "content": content}], max_output_tokens=16,
                                       stream=True))
    assert events[-1].type in ("response.completed", "response.incomplete")  # noise may run to the limit
    assert events[-1].response.usage.input_tokens == response.usage.input_tokens
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model=vision.model, max_output_tokens=16, input=[{"role": "user", "content": [
            {"type": "input_image", "file_id": "file-123"}]}])
    assert refused.value.body["param"] == "input[0].content[0].file_id"


def test_responses_image_in_a_function_call_output(vision: Vision, client: httpx.Client) -> None:
    """Codex CLI's view_image: the tool's output carries the picture as an input_image."""
    items = [{"role": "user", "content": "Look at screenshot.png"},
             {"type": "function_call", "call_id": "call_1", "name": "view_image", "arguments": '{"path": "screenshot.png"}'},
             {"type": "function_call_output", "call_id": "call_1",
              "output": [{"type": "input_image", "image_url": data_uri(RED)}]}]
    tools = [{"type": "function", "name": "view_image", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}]
    response = client.post("/v1/responses", json={"model": vision.model, "input": items, "tools": tools,
                                                   "max_output_tokens": 16, "store": False})
    assert response.status_code == 200, response.text
    text_only = client.post("/v1/responses", json={"model": vision.model, "input": items[:2] + [
        {"type": "function_call_output", "call_id": "call_1", "output": ""}], "tools": tools, "max_output_tokens": 16,
        "store": False})
    assert response.json()["usage"]["input_tokens"] == text_only.json()["usage"]["input_tokens"] + vision.image_tokens


def test_anthropic_sdk_messages_with_images_in_turns_and_tool_results(vision: Vision) -> None:
    sdk = anthropic.Anthropic(base_url=vision.url, api_key="unused", max_retries=0)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(BLUE)}}
    message = sdk.messages.create(model=vision.model, max_tokens=3, messages=[{"role": "user", "content": [
        image, {"type": "text", "text": "What is this?"}]}])
    assert message.usage.input_tokens > vision.image_tokens
    counted = sdk.messages.count_tokens(model=vision.model, messages=[{"role": "user", "content": [
        image, {"type": "text", "text": "What is this?"}]}])
    assert counted.input_tokens == message.usage.input_tokens + message.usage.cache_read_input_tokens  # (as Anthropic counts)
    # A screenshot a tool took, returned in its result (Claude Code's shape).
    tools = [{"name": "screenshot", "description": "Take a screenshot", "input_schema": {"type": "object", "properties": {}}}]
    history = [
        {"role": "user", "content": "Take a screenshot and tell me what you see."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "screenshot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "text", "text": "Here it is."}, image]}]},
    ]
    with sdk.messages.stream(model=vision.model, max_tokens=3, tools=tools, messages=history) as stream:
        final = stream.get_final_message()
    assert final.usage.input_tokens > vision.image_tokens


def test_ollama_sdk_chat_and_generate(vision: Vision) -> None:
    sdk = ollama.Client(host=vision.url)
    answer = sdk.chat(model=vision.model, messages=[{"role": "user", "content": "What is this?", "images": [RED]}],
                      options={"num_predict": 3})
    assert answer.prompt_eval_count > vision.image_tokens
    parts = list(sdk.chat(model=vision.model, stream=True, options={"num_predict": 3},
                          messages=[{"role": "user", "content": "What is this?", "images": [b64(GREEN)]}]))
    assert parts[-1].prompt_eval_count > vision.image_tokens  # tokens read (not cached), as Ollama counts them
    generated = sdk.generate(model=vision.model, prompt="What is this?", images=[BLUE], options={"num_predict": 3})
    assert generated.prompt_eval_count > vision.image_tokens
    with pytest.raises(ollama.ResponseError) as refused:
        sdk.generate(model=vision.model, prompt="x", images=[BLUE], raw=True)
    assert refused.value.status_code == 400


# ---------------------------------------------------------------- bad images: a 400 each, and the server goes on


BAD = [
    ("truncated PNG", data_uri(RED[: len(RED) // 2]), "invalid_image"),
    ("a text file called image/png", data_uri(b"just some text, not a picture\n" * 4), "invalid_image"),
    ("50 megapixels", data_uri(huge_png(10_000, 5_000)), "image_too_large"),
    ("not base64", "data:image/png;base64,@@@@", "invalid_image"),
    ("a BMP", data_uri(png((9, 9, 9), kind="BMP"), "image/bmp"), "unsupported_image_format"),
    ("file://", "file:///etc/passwd", "invalid_image_url"),
    ("loopback URL", "http://127.0.0.1:1/cat.png", "image_url_not_allowed"),
    ("private URL", "http://10.1.2.3/cat.png", "image_url_not_allowed"),
    ("localhost by name", "http://localhost/cat.png", "image_url_not_allowed"),
]


@pytest.mark.parametrize("url,code", [(url, code) for _, url, code in BAD], ids=[name for name, _, _ in BAD])
def test_bad_images_are_a_400_naming_the_part(client: httpx.Client, url: str, code: str) -> None:
    response = chat(client, [{"type": "text", "text": "Look:"}, {"type": "image_url", "image_url": {"url": url}}])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["param"] == "messages[0].content[1].image_url.url", error
    assert chat(client, [{"type": "text", "text": "still there?"}]).status_code == 200


def test_bad_images_in_each_envelope(vision: Vision, client: httpx.Client) -> None:
    broken = b64(RED[:40])
    anthropic_error = client.post("/v1/messages", json={"model": vision.model, "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": broken}}]}]})
    assert anthropic_error.status_code == 400
    assert anthropic_error.json()["type"] == "error" and anthropic_error.json()["error"]["type"] == "invalid_request_error"
    ollama_error = client.post("/api/chat", json={"model": vision.model, "stream": False, "messages": [
        {"role": "user", "content": "x", "images": [broken]}]})
    assert ollama_error.status_code == 400 and "messages[0].images[0]" in ollama_error.json()["error"]
    responses_error = client.post("/v1/responses", json={"model": vision.model, "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64," + broken}]}]})
    assert responses_error.status_code == 400
    assert responses_error.json()["error"]["param"] == "input[0].content[0].image_url"


def test_too_many_images(vision: Vision, client: httpx.Client) -> None:
    response = chat(client, [image_part(RED)] * 4)
    assert response.status_code == 400 and response.json()["error"]["code"] == "too_many_images"


def test_fetching_is_off_by_default(server: Server) -> None:
    """The GGUF server runs with the defaults; its model has no vision, which is said first (nothing is fetched)."""
    with server.client() as c:
        response = chat(c, [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}])
    assert response.status_code == 400 and response.json()["error"]["code"] == "model_has_no_vision"


def test_a_text_model_refuses_images_on_every_api(server: Server) -> None:
    with server.client() as c:
        refusals = [
            chat(c, [{"type": "text", "text": "What is this?"}, image_part(RED)]),
            c.post("/v1/responses", json={"input": [{"role": "user", "content": [
                {"type": "input_image", "image_url": data_uri(RED)}]}]}),
            c.post("/v1/messages", json={"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(RED)}}]}]}),
            c.post("/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "x", "images": [b64(RED)]}]}),
            c.post("/api/generate", json={"model": MODEL, "prompt": "x", "images": [b64(RED)]}),
        ]
        for response in refusals:
            assert response.status_code == 400, response.text
            assert "has no vision" in response.text
        assert chat(c, [{"type": "text", "text": "hello"}]).status_code == 200


# ---------------------------------------------------------------- under load


async def _load(url: str, model: str) -> list[str]:
    """4 clients, each sending 4 requests one after another: pictures and plain text mixed, half of them streamed."""
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        async def one(i: int) -> str:
            content = [image_part([RED, BLUE, GREEN][i % 3]), {"type": "text", "text": f"Picture {i}?"}] if i % 2 \
                else [{"type": "text", "text": f"Hello {i}"}]
            stream = i % 4 < 2
            response = await c.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": content}],
                                                                  "max_tokens": 8, "stream": stream})
            whole = response.status_code == 200 and ("data: [DONE]" in response.text if stream else "choices" in response.json())
            return "ok" if whole and '"error"' not in response.text else response.text

        async def client_of(k: int) -> list[str]:
            return [await one(k * 4 + j) for j in range(4)]

        return [outcome for outcomes in await asyncio.gather(*(client_of(k) for k in range(4))) for outcome in outcomes]


def test_four_clients_mixing_images_and_text(vision: Vision, client: httpx.Client) -> None:
    assert asyncio.run(_load(vision.url, vision.model)) == ["ok"] * 16
    # A slot is given back just after its last chunk is sent: wait for that, not a fixed time.
    deadline = time.monotonic() + 10
    while (state := engine(client))["running"] or state["queued"]:
        assert time.monotonic() < deadline, state
        time.sleep(0.05)


# ---------------------------------------------------------------- URL rules (units)


def test_fetch_rules() -> None:
    limits = ImageLimits(1 << 20, 1 << 20, 4, ("images.example.com", "*.cdn.example.org"), 5.0)
    assert limits.allows("images.example.com") and limits.allows("a.cdn.example.org")
    assert not limits.allows("example.com") and not limits.allows("cdn.example.org.evil.net")
    assert ImageLimits(1, 1, 1, ("*",), 1).allows("anything.net")

    async def check(url: str) -> str | None:
        try:
            await _check_target(url, "p", ImageLimits(1, 1, 1, ("*",), 1))
        except APIError as exc:
            return exc.body.code
        return None

    assert asyncio.run(check("http://[::1]/a.png")) == "image_url_not_allowed"
    assert asyncio.run(check("http://169.254.169.254/latest/meta-data")) == "image_url_not_allowed"  # cloud metadata
    assert asyncio.run(check("ftp://example.com/a.png")) == "image_url_not_allowed"
    assert asyncio.run(check("http://8.8.8.8/a.png")) is None  # a public address passes the check
    assert asyncio.run(_check_target("http://8.8.8.8:8080/a.png", "p", ImageLimits(1, 1, 1, ("*",), 1))) == "8.8.8.8"


def test_image_input_keeps_no_bytes_in_its_repr() -> None:
    assert "data" not in repr(ImageInput("x", "p", data=b"\x89PNG" * 100))


def test_fetching_goes_to_the_checked_address_and_checks_every_redirect(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fetch itself, against a local HTTP server standing in for public hosts (a resolver that says where
    `images.test` lives replaces the address check, which a loopback server could never pass)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import local_llm_api.images as images

    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            seen.append(self.headers["Host"])
            routes = {"/cat.png": (200, RED), "/big.png": (200, b"x" * 5000), "/gone.png": (404, b"")}
            if self.path.startswith("/to/"):
                self.send_response(302)
                self.send_header("Location", f"http://{self.path[4:]}")
                self.end_headers()
                return
            status, body = routes.get(self.path, (404, b""))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    async def resolver(url: str, param: str, limits: ImageLimits) -> str:
        host = httpx.URL(url).host
        if host != "images.test":
            raise images.invalid_request(f"'{param}': {host} is private", param, "image_url_not_allowed")
        return "127.0.0.1"

    monkeypatch.setattr(images, "_check_target", resolver)
    limits = ImageLimits(4096, 1 << 20, 4, ("*",), 5.0)

    def fetch(path: str) -> bytes | str:
        try:
            return asyncio.run(images.fetch(f"http://images.test:{port}{path}", "p", limits))
        except APIError as exc:
            return str(exc.body.code)

    try:
        assert fetch("/cat.png") == RED and seen[-1] == f"images.test:{port}"  # the name in Host, the checked address dialled
        assert fetch(f"/to/images.test:{port}/cat.png") == RED  # a redirect to an allowed host is followed
        assert fetch("/to/evil.test/cat.png") == "image_url_not_allowed"  # one to a private address is not
        assert fetch("/big.png") == "image_too_large"  # cut at MAX_IMAGE_BYTES
        assert fetch("/gone.png") == "image_fetch_failed"
    finally:
        server.shutdown()


@pytest.mark.parametrize("kind", ["WEBP", "GIF"])
def test_webp_and_gif_are_read(vision: Vision, client: httpx.Client, kind: str) -> None:
    data = png((200, 100, 0), kind=kind)
    response = chat(client, [image_part(data), {"type": "text", "text": "What is this?"}])
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] > vision.image_tokens
