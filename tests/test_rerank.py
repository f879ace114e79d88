"""POST /rerank (and /v1/rerank): a cross-encoder made here (tiny, randomly initialised, saved to disk both as a
sentence-transformers CrossEncoder and as a bare Transformers sequence classifier) gives through the server the
scores sentence-transformers gives directly; all-MiniLM-L6-v2 answers by embedding similarity when named."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import Server, running_server
from .models import MINILM, minilm_folder, place_tree

QUERY = "What is the capital of France?"
DOCUMENTS = ["Bananas are a yellow fruit.", "Paris is the capital and largest city of France.", "The stock market fell today."]


def make_cross_encoders(root: Path) -> tuple[Path, Path]:
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=1, max_position_embeddings=128)
    torch.manual_seed(0)
    bare = root / "bare-classifier"
    BertForSequenceClassification(config).save_pretrained(bare)
    tokenizer.save_pretrained(bare)
    saved = root / "tiny-reranker"
    CrossEncoder(str(bare)).save(str(saved))  # config_sentence_transformers.json says CrossEncoder
    return saved, bare


@pytest.fixture(scope="module")
def rerank_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, Path]]:
    models = tmp_path_factory.mktemp("rerank-models")
    saved, bare = make_cross_encoders(models)
    place_tree(minilm_folder(), models / MINILM)
    env = {"PRELOAD_MODEL": "false", "DEFAULT_MODEL": "", "RERANK_MODEL": "tiny-reranker"}
    with running_server(tmp_path_factory.mktemp("rerank"), models, wait_for_model=False, **env) as server:
        yield server, saved, bare


def direct_scores(folder: Path, documents: list[str]) -> list[float]:
    from sentence_transformers import CrossEncoder

    return [float(s) for s in CrossEncoder(str(folder)).predict([(QUERY, d) for d in documents])]


def test_cross_encoder_scores_match_sentence_transformers(rerank_server: tuple[Server, Path, Path]) -> None:
    server, saved, bare = rerank_server
    with server.client() as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert models["tiny-reranker"]["capabilities"] == models["bare-classifier"]["capabilities"] == ["rerank"]
        for path, model, folder in (("/rerank", None, saved), ("/v1/rerank", "bare-classifier", bare)):
            body = {"query": QUERY, "documents": DOCUMENTS, **({"model": model} if model else {})}
            answer = client.post(path, json=body)
            assert answer.status_code == 200, answer.text
            data = answer.json()
            assert data["method"] == "cross-encoder" == answer.headers["x-rerank-method"]
            assert data["model"] == (model or "tiny-reranker") and data["usage"]["total_tokens"] > 20
            expected = direct_scores(folder, DOCUMENTS)
            by_index = {r["index"]: r["relevance_score"] for r in data["results"]}
            assert by_index == pytest.approx(dict(enumerate(expected)), abs=1e-5)
            scores = [r["relevance_score"] for r in data["results"]]
            assert scores == sorted(scores, reverse=True) and "document" not in data["results"][0]


def test_embedding_fallback_puts_the_relevant_document_first(rerank_server: tuple[Server, Path, Path]) -> None:
    server, _, _ = rerank_server
    with server.client() as client:
        answer = client.post("/api/v1/rerank", json={"model": MINILM, "query": QUERY, "return_documents": True, "top_n": 2,
                                                     "documents": [DOCUMENTS[0], {"text": DOCUMENTS[1]}, DOCUMENTS[2]]})
        assert answer.status_code == 200, answer.text
        data = answer.json()
        assert data["method"] == "embedding-similarity" and len(data["results"]) == 2
        assert data["results"][0]["index"] == 1 and data["results"][0]["document"]["text"] == DOCUMENTS[1]
        assert data["results"][0]["relevance_score"] > data["results"][1]["relevance_score"] + 0.2


def test_rerank_refuses_bad_input(rerank_server: tuple[Server, Path, Path]) -> None:
    server, _, _ = rerank_server
    with server.client() as client:
        for body, param in (({"query": QUERY, "documents": []}, "documents"), ({"query": "", "documents": ["a"]}, "query"),
                            ({"query": QUERY, "documents": ["a"], "top_n": 0}, "top_n"),
                            ({"query": QUERY, "documents": ["a"], "model": "nothing"}, "model")):
            refused = client.post("/rerank", json=body)
            assert refused.status_code in (400, 404) and refused.json()["error"]["param"] == param, refused.text
        # Cohere's rank_fields (fields of structured documents; these are texts) is accepted and named.
        named = client.post("/rerank", json={"query": QUERY, "documents": ["a"], "rank_fields": ["x"]})
        assert named.status_code == 200 and named.headers["x-ignored-fields"] == "rank_fields"
        chat = client.post("/v1/chat/completions", json={"model": "tiny-reranker", "messages": [{"role": "user", "content": "x"}]})
        assert chat.status_code == 400 and "serves rerank requests only" in chat.json()["error"]["message"]
        assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
