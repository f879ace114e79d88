"""GET /metrics: the engines' figures in Prometheus format, read from each loaded model at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..manager import ModelManager
from .auth import require_api_key

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["admin"])


class EngineCollector(Collector):
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        gauges = {
            "slots": GaugeMetricFamily("llm_slots", "Sequences a model can decode together", labels=["model"]),
            "running": GaugeMetricFamily("llm_running_sequences", "Sequences being decoded", labels=["model"]),
            "queued": GaugeMetricFamily("llm_queue_length", "Requests waiting for a slot", labels=["model"]),
            "tokens_per_second": GaugeMetricFamily("llm_tokens_per_second", "Generated tokens/s over the last 10 s", labels=["model"]),
            "prompt_tokens_per_second": GaugeMetricFamily(
                "llm_prompt_tokens_per_second", "Prompt tokens read per second of reading, over the last 10 s", labels=["model"]),
            "alive": GaugeMetricFamily("llm_engine_alive", "1 while the model's engine thread runs", labels=["model"]),
            "kv_cache_tokens": GaugeMetricFamily(
                "llm_kv_cache_tokens", "Tokens whose keys and values are held (running and kept for reuse)", labels=["model"]),
            "kv_cache_capacity": GaugeMetricFamily(
                "llm_kv_cache_capacity_tokens", "Tokens the KV cache can hold (0: grows as needed)", labels=["model"]),
            "prefix_cache_hit_rate": GaugeMetricFamily(
                "llm_prefix_cache_hit_ratio", "Prompt tokens served from the prefix cache / prompt tokens", labels=["model"]),
        }
        counters = {
            "prompt_tokens_total": CounterMetricFamily("llm_prompt_tokens", "Prompt tokens admitted", labels=["model"]),
            "cached_prompt_tokens_total": CounterMetricFamily("llm_cached_prompt_tokens", "Prompt tokens served from the prefix cache", labels=["model"]),
            "shared_prompt_tokens_total": CounterMetricFamily(
                "llm_shared_prompt_tokens", "Prompt tokens copied from another slot's prefix cache", labels=["model"]),
            "disk_prompt_tokens_total": CounterMetricFamily(
                "llm_disk_prompt_tokens", "Prompt tokens loaded from the prefix cache's disk tier", labels=["model"]),
            "disk_prefixes_saved_total": CounterMetricFamily(
                "llm_disk_prefixes_saved", "Prompt prefixes written to the prefix cache's disk tier", labels=["model"]),
            "generated_tokens_total": CounterMetricFamily("llm_generated_tokens", "Tokens generated", labels=["model"]),
            "draft_tokens_total": CounterMetricFamily(
                "llm_draft_tokens", "Tokens guessed by prompt lookup and checked by the model", labels=["model"]),
            "accepted_draft_tokens_total": CounterMetricFamily(
                "llm_accepted_draft_tokens", "Guessed tokens the model confirmed", labels=["model"]),
            "requests_total": CounterMetricFamily("llm_sequences_finished", "Sequences finished or cancelled", labels=["model"]),
            "images_encoded_total": CounterMetricFamily(
                "llm_images_encoded", "Images run through the vision tower (not those read from the prefix cache)", labels=["model"]),
        }
        ttft = HistogramMetricFamily("llm_time_to_first_token_seconds", "Time from arrival to first token", labels=["model"])
        for name, model in list(self.manager.loaded.items()):
            stats = model.backend.stats()
            for key, family in {**gauges, **counters}.items():
                family.add_metric([name], float(getattr(stats, key)))
            buckets = [("+Inf" if bound == float("inf") else str(bound), count) for bound, count in stats.ttft_buckets.items()]
            if buckets:  # an embedding model has no first tokens (and prometheus-client refuses an empty histogram)
                ttft.add_metric([name], buckets, stats.ttft_sum)
        loaded = GaugeMetricFamily("llm_models_loaded", "Models in memory")
        loaded.add_metric([], len(self.manager.loaded))
        yield from (*gauges.values(), *counters.values(), ttft, loaded)


def metrics_registry(manager: ModelManager) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(EngineCollector(manager))
    return registry


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
