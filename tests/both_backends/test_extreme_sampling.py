"""In-range but extreme sampling values (a temperature of 1e-300, a repeat penalty of 5e-324) overflow the
arithmetic on the way to a probability: they must answer like their limit (greedy, the smallest penalty we
apply) and never hurt the requests decoded beside them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from ..conftest import Served

MESSAGES = [{"role": "user", "content": "Name a colour."}]
EXTREMES = [
    {"temperature": 1e-300},
    {"repeat_penalty": 5e-324},
    {"temperature": 1e-300, "repeat_penalty": 5e-324, "top_k": 0, "top_p": 1, "min_p": 0},
    {"temperature": 2, "frequency_penalty": 2, "presence_penalty": -2, "top_k": 0, "top_p": 1, "min_p": 0},
    {"logit_bias": {"0": 100, "1": 100, "2": 100}, "repeat_penalty": 5e-324, "temperature": 1.5},
]


def test_extreme_values_answer_beside_healthy_requests(served: Served) -> None:
    def ask(extra: dict) -> httpx.Response:
        body = {"model": served.model, "messages": MESSAGES, "max_tokens": 12, **extra}
        return httpx.post(f"{served.server.url}/v1/chat/completions", json=body, timeout=120)

    with ThreadPoolExecutor(len(EXTREMES) + 2) as pool:
        healthy = [pool.submit(ask, {"temperature": 0.7, "seed": i}) for i in range(2)]
        extreme = [pool.submit(ask, extra) for extra in EXTREMES]
        answers = [f.result() for f in healthy + extreme]
    for response in answers:
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
    tiny, greedy = ask({"temperature": 1e-300}), ask({"temperature": 0})
    assert tiny.json()["choices"][0]["message"]["content"] == greedy.json()["choices"][0]["message"]["content"]
    assert httpx.get(f"{served.server.url}/health").json()["status"] == "ok"
