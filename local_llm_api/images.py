"""Images in requests, one reader for every API's shapes. A dialect turns its image part into an `ImageInput`
holding what was sent (a data URI, bare base64, or an http(s) URL); here it is read: URLs fetched only where
IMAGE_URL_FETCH allows the host (never loopback, private or link-local addresses, never `file://`), the file decoded
with Pillow (PNG, JPEG, WebP, GIF's first frame) and held to MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS and MAX_IMAGES.
Every refusal is a 400 naming the part; nothing is decoded twice for a request."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import ipaddress
import re
import socket
from dataclasses import dataclass, field, replace
from urllib.parse import urljoin, urlsplit

from .config import Settings
from .errors import invalid_request


@dataclass(frozen=True)
class ImageInput:
    """An image part as the request sent it (`source`: a data URI, bare base64 or an http(s) URL), and once read
    (`load`), its file, content digest and size."""

    source: str
    param: str  # where in the request, for errors
    data: bytes = field(default=b"", repr=False)
    digest: str = ""  # sha256 of the file: the same picture is the same prompt (prefix cache)
    width: int = 0
    height: int = 0


FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
MAX_REDIRECTS = 3
_DATA_URI = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[^;,]*)*)(?P<b64>;base64)?,(?P<data>.*)", re.S)


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    max_images: int
    fetch: tuple[str, ...]  # hosts whose URLs are fetched; ("*",) any public host; () none
    timeout: float

    @classmethod
    def of(cls, settings: Settings) -> ImageLimits:
        hosts = tuple(h.strip().lower() for h in settings.image_url_fetch.split(",") if h.strip())
        return cls(settings.max_image_bytes, settings.max_image_pixels, settings.max_images, hosts,
                   settings.image_url_timeout_seconds)

    def allows(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(rule == "*" or host == rule or (rule.startswith("*.") and host.endswith(rule[1:])) for rule in self.fetch)


async def load(image: ImageInput, limits: ImageLimits) -> ImageInput:
    """The image read (fetched where allowed), decoded and checked."""
    source = image.source.strip()
    scheme = urlsplit(source[:16]).scheme.lower() if ":" in source[:16] else ""
    if scheme in ("http", "https"):
        data = await fetch(source, image.param, limits)
    elif scheme == "data":
        data = _data_uri(source, image.param)
    elif scheme:
        raise invalid_request(f"'{image.param}': {scheme}: URLs are not read; send the image as base64, a data URI or an "
                              "http(s) URL.", image.param, "invalid_image_url")
    else:
        data = _base64(source, image.param)
    return await asyncio.to_thread(checked, data, image, limits)


def _data_uri(source: str, param: str) -> bytes:
    match = _DATA_URI.fullmatch(source)
    if match is None or not match.group("b64"):
        raise invalid_request(f"'{param}' is not a base64 data URI (data:image/png;base64,...).", param, "invalid_image")
    return _base64(match.group("data"), param)


def _base64(text: str, param: str) -> bytes:
    try:
        return base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_request(f"'{param}' is neither base64 image data, a data URI nor an http(s) URL.", param,
                              "invalid_image") from None


def checked(data: bytes, image: ImageInput, limits: ImageLimits) -> ImageInput:
    """The image measured and decoded once (a truncated or disguised file fails here, not in the model)."""
    from PIL import Image, UnidentifiedImageError

    param = image.param
    if len(data) > limits.max_bytes:
        raise invalid_request(f"'{param}' is {len(data)} bytes; this server takes images up to {limits.max_bytes} bytes "
                              "(MAX_IMAGE_BYTES).", param, "image_too_large")
    try:
        with Image.open(io.BytesIO(data)) as picture:
            if picture.format not in FORMATS:
                raise invalid_request(f"'{param}' is a {picture.format} image; send PNG, JPEG, WebP or GIF.", param,
                                      "unsupported_image_format")
            width, height = picture.size
            if width * height > limits.max_pixels:
                raise invalid_request(f"'{param}' is {width}x{height} pixels; this server takes at most "
                                      f"{limits.max_pixels} pixels (MAX_IMAGE_PIXELS).", param, "image_too_large")
            picture.seek(0)
            picture.load()
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise invalid_request(f"'{param}' is not an image this server can read (PNG, JPEG, WebP or GIF).", param,
                              "invalid_image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise invalid_request(f"'{param}' could not be decoded ({exc}); the file may be truncated.", param,
                              "invalid_image") from None
    return replace(image, data=data, digest=hashlib.sha256(data).hexdigest(), width=width, height=height)


def rgb(image: ImageInput):  # noqa: ANN201 (PIL is imported lazily)
    """The picture as the models read it: RGB pixels, a GIF's first frame."""
    from PIL import Image

    with Image.open(io.BytesIO(image.data)) as picture:
        picture.seek(0)
        return picture.convert("RGB")


# ---------------------------------------------------------------- fetching URLs


async def fetch(url: str, param: str, limits: ImageLimits) -> bytes:
    """An image URL's body, where IMAGE_URL_FETCH allows its host; redirects are followed by hand (each hop checked)."""
    import httpx

    if not limits.fetch:
        raise invalid_request(f"'{param}' is a URL, and this server does not fetch image URLs (IMAGE_URL_FETCH is off); "
                              "send the image as base64 or a data URI.", param, "image_url_not_allowed")
    try:
        return await asyncio.wait_for(_fetch(url, param, limits), limits.timeout)
    except asyncio.TimeoutError:
        raise invalid_request(f"'{param}': fetching the image took longer than {limits.timeout:g} s.", param,
                              "image_fetch_failed") from None
    except httpx.HTTPError as exc:
        raise invalid_request(f"'{param}': fetching the image failed ({type(exc).__name__}).", param,
                              "image_fetch_failed") from None


async def _fetch(url: str, param: str, limits: ImageLimits) -> bytes:
    import httpx

    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            address = await _check_target(url, param, limits)
            # Connected to the address just checked (the name is not looked up again: a DNS answer that changes
            # between the check and the connection cannot lead inside); the name goes in Host and TLS's SNI.
            parts = urlsplit(url)
            host = f"[{address}]" if ":" in address else address
            pinned = parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")).geturl()
            headers = {"Accept": "image/*", "Host": parts.netloc.rpartition("@")[2]}
            async with client.stream("GET", pinned, headers=headers, extensions={"sni_hostname": parts.hostname}) as response:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise invalid_request(f"'{param}': fetching the image gave HTTP {response.status_code}.", param,
                                          "image_fetch_failed")
                body = bytearray()
                async for piece in response.aiter_bytes():
                    body += piece
                    if len(body) > limits.max_bytes:
                        raise invalid_request(f"'{param}' is larger than {limits.max_bytes} bytes (MAX_IMAGE_BYTES).",
                                              param, "image_too_large")
                return bytes(body)
    raise invalid_request(f"'{param}': more than {MAX_REDIRECTS} redirects.", param, "image_fetch_failed")


async def _check_target(url: str, param: str, limits: ImageLimits) -> str:
    """The URL is http(s), its host allowed, and every address it resolves to public: the first of them."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise invalid_request(f"'{param}': {url[:100]} is not an http(s) URL.", param, "image_url_not_allowed")
    if not limits.allows(host):
        raise invalid_request(f"'{param}': images from {host} are not fetched (IMAGE_URL_FETCH).", param,
                              "image_url_not_allowed")
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80),
                                                             type=socket.SOCK_STREAM)
    except OSError:
        raise invalid_request(f"'{param}': {host} could not be resolved.", param, "image_fetch_failed") from None
    for *_, address in found:
        ip = ipaddress.ip_address(address[0])
        if not ip.is_global or ip.is_multicast:
            raise invalid_request(f"'{param}': {host} is a loopback, private or link-local address; such images are "
                                  "never fetched.", param, "image_url_not_allowed")
    return str(found[0][4][0])
