"""local-llm-api on Ray Serve: N replicas of the whole server behind one endpoint (`local-llm-api serve --replicas N`).

- `app.py`: the Ray Serve application: the ingress (`Gateway`) and the replicas (`ModelServer`), and `build` for
  `serve run` / `serve deploy` config files.
- `gateway.py`: the ingress's FastAPI app: API keys, routing hints, streaming back, /health and /metrics of all replicas.
- `router.py`: which replica takes a request (its model loaded there, its conversation's prefix cached there).
- `forward.py`: a forwarded HTTP request run through our app inside a replica.

Nothing here is imported by the single-process server: Ray is an optional extra (`local-llm-api[ray]`).
"""
