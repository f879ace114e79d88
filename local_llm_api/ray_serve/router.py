"""Which replica takes a request: Ray Serve's request router, with two preferences of ours in front.

Ray provides (PowerOfTwoChoicesRequestRouter, which this extends): replicas that hold the request's model
first (model multiplexing: the gateway tags each request with its model), else those holding the fewest models;
then the less busy of two; queueing, retries and dead replicas. We add:
- prefix affinity: a request whose conversation (model, system prompt and first turn) went to a replica before
  goes there again, where its prefix is cached, unless all that replica's slots are busy while another replica
  has fewer requests in hand (waiting for a slot costs more than reading a prompt again);
- a request addressed to one replica (the gateway's /health and /metrics ask each of them).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import PendingRequest, ReplicaID, RunningReplica

from local_llm_api.ray_serve import registry  # by name: Ray pickles this module by value


class ModelAwareRouter(PowerOfTwoChoicesRequestRouter):
    def initialize_state(self, slots: int = 4, conversations: int = 10_000, **_: Any) -> None:
        self._slots = slots  # PARALLEL_SLOTS: requests a replica decodes at once
        self._limit = conversations
        self._where: OrderedDict[str, ReplicaID] = OrderedDict()  # conversation key -> replica (least recent first)
        registry.add(self)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        hints = pending_request.kwargs if pending_request is not None else {}
        if target := hints.get("replica"):
            return [[r for r in candidate_replicas if r.replica_id.unique_id == target]]
        ranks = await super().choose_replicas(candidate_replicas, pending_request)
        key = hints.get("affinity")
        home = self._where.get(key) if key else None
        if home is None:
            return ranks
        replica = next((r for r in candidate_replicas if r.replica_id == home), None)
        if replica is None or self._overloaded(home, candidate_replicas):
            return ranks
        return [[replica], *ranks]

    def _overloaded(self, home: ReplicaID, candidates: list[RunningReplica]) -> bool:
        cache = self.replica_queue_len_cache
        mine = cache.get(home)
        if mine is None or mine < self._slots:
            return False
        return any(q < mine for r in candidates if r.replica_id != home and (q := cache.get(r.replica_id)) is not None)

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        key = pending_request.kwargs.get("affinity") if pending_request is not None else None
        if key:
            self._where[key] = replica_id
            self._where.move_to_end(key)
            while len(self._where) > self._limit:
                self._where.popitem(last=False)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        for key in [k for k, v in self._where.items() if v == replica_id]:
            del self._where[key]
