"""`local-llm-api serve --replicas 2` on a local Ray instance: two replicas of the bundled model (one thread
each) behind one endpoint, through the official `openai` SDK: spreading, streaming, conversations sticking to
the replica that caches them, a second model on one replica, deployment-wide /health and /metrics, API keys at
the ingress, disconnects, and a replica killed under load.

One Ray instance serves the whole module (it takes about 15 s to start on 2 cores); the kill test runs last.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import queue
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is the optional extra local-llm-api[ray]")

import openai  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from local_llm_api.backends.base import EngineStats  # noqa: E402
from local_llm_api.ray_serve.gateway import add_stats, merge_metrics, routing_hints  # noqa: E402

from .conftest import MODEL, NO_END, Server, start_server, stop_server  # noqa: E402
from .models import MINILM, minilm_folder, place_tree  # noqa: E402

KEY = "ray-test-key"
READY_TIMEOUT = 120  # seconds for both replicas to hold the model (or a killed one to be replaced)


def health(server: Server) -> dict:
    return httpx.get(f"{server.url}/health", timeout=30).json()


def wait_for_replicas(server: Server, count: int, without: str | None = None) -> dict:
    """/health once `count` replicas answer, all ok and holding the default model (and `without` gone)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        state = health(server)
        replicas = state["replicas"]
        if (len(replicas) == count and without not in replicas and state["status"] == "ok"
                and all(r and MODEL in r["loaded_models"] for r in replicas.values())):
            return state
        assert time.monotonic() < deadline, f"replicas not ready: {json.dumps(state)[:2000]}"
        time.sleep(0.25)


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Server]:
    models = tmp_path_factory.mktemp("ray-models")
    os.link(model_dir / MODEL, models / MODEL)
    place_tree(minilm_folder(), models / MINILM)
    tmp = tmp_path_factory.mktemp("ray")
    server = start_server(tmp, models, args=["--replicas", "2"], THREADS="1", PARALLEL_SLOTS="4",
                          REPRODUCIBLE="false", API_KEY_REQUIRED="true", API_KEY=KEY, RAY_TMPDIR=str(tmp))
    try:
        wait_for_replicas(server, 2)
        yield server
    finally:
        stop_server(server)  # SIGTERM: the CLI shuts Serve and Ray down; what is left is killed


@pytest.fixture
def sdk(ray_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{ray_server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def ask(sdk: openai.OpenAI, messages: list[dict], max_tokens: int = 8) -> tuple[str, str]:
    """(answer, replica id) of one chat request."""
    raw = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=messages, max_tokens=max_tokens)  # type: ignore[arg-type]
    return raw.parse().choices[0].message.content or "", raw.headers["x-replica-id"]


def test_requests_spread_over_both_replicas(sdk: openai.OpenAI, ray_server: Server) -> None:
    replicas = set(health(ray_server)["replicas"])
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answered = Counter(pool.map(lambda i: ask(sdk, [{"role": "user", "content": f"Tell me about the number {i}."}],
                                                   max_tokens=24)[1], range(16)))
    assert set(answered) == replicas, answered  # both served, and no one else


def test_a_stream_arrives_token_by_token(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Write a story."}],
                                         max_tokens=20, stream=True, logit_bias=NO_END)
    arrivals = [time.monotonic() for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert len(arrivals) >= 15  # one chunk per token, not one block at the end
    assert arrivals[-1] - arrivals[0] > 0.05


def test_a_conversation_stays_with_the_replica_that_caches_it(sdk: openai.OpenAI, ray_server: Server) -> None:
    homes = []
    for topic in ("apples", "rivers", "engines", "violins"):
        messages = [{"role": "system", "content": f"You answer questions about {topic} in a few words."},
                    {"role": "user", "content": f"What are {topic}?"}]
        seen = set()
        for _ in range(3):
            answer, replica = ask(sdk, messages)
            seen.add(replica)
            messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Tell me more."}]
        assert len(seen) == 1, seen  # every turn on one replica
        homes.append(seen.pop())
    replicas = health(ray_server)["replicas"]
    assert all(replicas[home]["engines"][MODEL]["cached_prompt_tokens_total"] > 0 for home in homes)


def test_a_second_model_is_loaded_on_one_replica_and_its_requests_go_there(ray_server: Server) -> None:
    with httpx.Client(base_url=ray_server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client:
        served = {client.post("/v1/embeddings", json={"model": MINILM, "input": f"text {i}"}).headers["x-replica-id"]
                  for i in range(4)}
    assert len(served) == 1, served
    holders = [rid for rid, r in health(ray_server)["replicas"].items() if MINILM in r["loaded_models"]]
    assert holders == list(served)


def test_unloading_reaches_every_replica_and_a_load_is_routed_like_its_model(ray_server: Server) -> None:
    with httpx.Client(base_url=ray_server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client:
        assert client.post(f"/models/{MINILM}/unload").status_code == 200
        assert not [r for r in health(ray_server)["replicas"].values() if MINILM in r["loaded_models"]]
        loaded = client.post(f"/models/{MINILM}/load")
        assert loaded.status_code == 200 and loaded.json()["state"] == "loaded"
        home = loaded.headers["x-replica-id"]
        served = {client.post("/v1/embeddings", json={"model": MINILM, "input": f"text {i}"}).headers["x-replica-id"]
                  for i in range(3)}
    assert served == {home}
    assert [rid for rid, r in health(ray_server)["replicas"].items() if MINILM in r["loaded_models"]] == [home]


def test_health_and_metrics_describe_the_whole_deployment(ray_server: Server) -> None:
    state = health(ray_server)
    assert len(state["replicas"]) == 2 and state["status"] == "ok"
    per_replica = [r["engines"][MODEL] for r in state["replicas"].values()]
    for counter in ("generated_tokens_total", "prompt_tokens_total", "requests_total", "slots"):
        assert state["engines"][MODEL][counter] == sum(e[counter] for e in per_replica)
    assert len({r["system"]["process_id"] for r in state["replicas"].values()}) == 2
    text = httpx.get(f"{ray_server.url}/metrics", headers={"X-API-Key": KEY}).text
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == "llm_generated_tokens_total"]
    assert {s.labels["replica"] for s in samples if s.labels["model"] == MODEL} == set(state["replicas"])


def test_api_keys_are_checked_at_the_ingress(ray_server: Server) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    refused = httpx.post(f"{ray_server.url}/v1/chat/completions", json=body)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key"
    assert "x-replica-id" not in refused.headers  # no replica saw it
    anthropic = httpx.post(f"{ray_server.url}/v1/messages", json=body, headers={"x-api-key": "wrong"})
    assert anthropic.status_code == 401 and anthropic.json()["type"] == "error"
    assert httpx.get(f"{ray_server.url}/metrics").status_code == 401
    assert httpx.get(f"{ray_server.url}/health").status_code == 200


def test_a_client_that_goes_away_cancels_its_sequence(ray_server: Server) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a very long story."}], "max_tokens": 1500,
            "stream": True, "logit_bias": NO_END}
    with httpx.stream("POST", f"{ray_server.url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as response:
        replica = response.headers["x-replica-id"]
        for number, _ in enumerate(response.iter_lines()):
            if number > 10:
                break
    deadline = time.monotonic() + 30
    while health(ray_server)["replicas"][replica]["engines"][MODEL]["running"]:
        assert time.monotonic() < deadline, "the sequence kept running after its client left"
        time.sleep(0.1)


def test_a_replica_killed_under_load(ray_server: Server) -> None:
    processes = {replica: info["system"]["process_id"] for replica, info in health(ray_server)["replicas"].items()}
    body = {"model": MODEL, "max_tokens": 60, "logit_bias": NO_END}
    # The victim is the replica of the first stream to bring text: that stream is surely in flight when it dies (a
    # replica picked beforehand and killed once /health showed it busy could finish its share while /health answered).
    streaming: queue.Queue[str] = queue.Queue()

    def one(number: int) -> tuple[int, str, str]:
        stream = number % 2 == 0
        request = {**body, "stream": stream, "messages": [{"role": "user", "content": f"Write story number {number}."}]}
        if stream:
            request["max_tokens"] = 200  # long enough to be cut off by the kill
        with httpx.stream("POST", f"{ray_server.url}/v1/chat/completions", json=request,
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=90) as response:
            chunks = []
            for chunk in response.iter_bytes():
                if stream and not chunks and b'"content"' in chunk:
                    streaming.put(response.headers["x-replica-id"])
                chunks.append(chunk)
            return response.status_code, response.headers.get("content-type", ""), b"".join(chunks).decode()

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(one, n) for n in range(12)]
        victim = streaming.get(timeout=60)
        os.kill(processes[victim], signal.SIGKILL)
        killed = time.monotonic()
        results = [f.result(timeout=120) for f in futures]  # none hangs
    failed = 0
    for status, content_type, text in results:
        if status == 503:  # not begun: the error envelope, a retry hint
            assert json.loads(text)["error"]["code"] == "replica_unavailable"
            failed += 1
        else:
            assert status == 200
            if "event-stream" in content_type and '"replica_unavailable"' in text:  # begun: it ends with an error event
                assert text.rstrip().splitlines()[-1].startswith("data: {\"error\"")
                failed += 1
            elif "event-stream" in content_type:
                assert text.rstrip().endswith("data: [DONE]")
            else:
                assert json.loads(text)["choices"][0]["message"]["content"]
    assert 0 < failed < len(results)  # the victim's requests failed cleanly; the other replica's did not
    state = wait_for_replicas(ray_server, 2, without=victim)  # Ray replaced it
    assert time.monotonic() - killed < READY_TIMEOUT
    assert victim not in state["replicas"]
    with httpx.Client(base_url=ray_server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
        assert client.post("/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": "Hi"}],
                                                         "max_tokens": 4}).status_code == 200


# The gateway's own logic, without a Ray instance.

def test_routing_hints_name_the_model_and_the_conversation_start() -> None:
    first = {"model": "m", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]}
    later = {**first, "messages": [*first["messages"], {"role": "assistant", "content": "A"},
                                   {"role": "user", "content": "more"}]}
    other = {**first, "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "V"}]}
    model, key = routing_hints(json.dumps(first).encode(), "default")
    assert model == "m" and key == routing_hints(json.dumps(later).encode(), "default")[1]
    assert key != routing_hints(json.dumps(other).encode(), "default")[1]
    assert routing_hints(json.dumps({"prompt": "Once"}).encode(), "default")[0] == "default"
    assert routing_hints(b"not json", "default") == ("", None)
    assert routing_hints(json.dumps({"model": "m"}).encode(), "default") == ("m", None)


def test_stats_of_two_replicas_add_up() -> None:
    a = EngineStats(slots=4, running=1, queued=0, max_queue=8, generated_tokens_total=10, tokens_per_second=5.0,
                    time_to_first_token_p50=0.2, ttft_buckets={0.1: 1, 1.0: 2}, ttft_sum=0.5)
    b = EngineStats(slots=4, running=2, queued=1, max_queue=8, generated_tokens_total=7, tokens_per_second=2.5,
                    time_to_first_token_p50=0.4, ttft_buckets={0.1: 0, 1.0: 3}, ttft_sum=1.0,
                    prompt_tokens_total=100, cached_prompt_tokens_total=50, prefix_cache_hit_rate=0.5)
    total = add_stats(a, b)
    assert (total.slots, total.running, total.queued, total.generated_tokens_total) == (8, 3, 1, 17)
    assert total.tokens_per_second == 7.5 and total.time_to_first_token_p50 == 0.4
    assert total.ttft_buckets == {0.1: 1, 1.0: 5} and total.ttft_sum == 1.5
    assert total.prefix_cache_hit_rate == 0.5  # recomputed from the sums, not added


def test_metrics_of_replicas_merge_into_one_exposition() -> None:
    one = '# HELP c_total A count\n# TYPE c_total counter\nc_total{model="m"} 3.0\n'
    two = '# HELP c_total A count\n# TYPE c_total counter\nc_total{model="m"} 4.0\n'
    families = list(text_string_to_metric_families(merge_metrics({"r1": one, "r2": two})))
    assert len(families) == 1 and families[0].type == "counter"
    assert {(s.labels["replica"], s.value) for s in families[0].samples} == {("r1", 3.0), ("r2", 4.0)}


def test_the_cluster_config_is_a_valid_serve_config_for_our_builder(tmp_path: Path) -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from local_llm_api.ray_serve.app import build

    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "deploy" / "ray-serve.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    (application,) = config["applications"]
    assert application["import_path"] == "local_llm_api.ray_serve.app:build"
    gateway = build({**application["args"], "MODEL_DIR": str(tmp_path)})._bound_deployment
    servers = gateway.init_args[0]._bound_deployment
    args = application["args"]
    assert servers.ray_actor_options == {"num_cpus": args["REPLICA_CPUS"], "num_gpus": args["REPLICA_GPUS"]}
    scaling = servers._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (args["REPLICAS"], args["MAX_REPLICAS"])
    assert scaling.target_ongoing_requests == args["PARALLEL_SLOTS"]


def test_the_single_process_server_does_not_import_ray() -> None:
    code = ("import sys; from local_llm_api.main import create_app; from local_llm_api import cli; "
            "create_app(); assert not any(m == 'ray' or m.startswith('ray.') for m in sys.modules), 'ray imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
