"""Sequential unlearning: each job starts from the current production version, later
versions keep forgetting earlier subjects, and long adapter chains are compacted."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.models import Model, ModelVersion
from app.db.session import session_scope
from tests.conftest import auth, register_model, share_answered, wait_for_request
from workers.engine.qa import load_jsonl


@pytest.fixture()
def client(lethe_env, monkeypatch):
    from app.api.main import create_app
    from app.settings import get_settings

    monkeypatch.setenv("LETHE_MAX_ADAPTER_CHAIN", "1")
    get_settings.cache_clear()
    with TestClient(create_app()) as c:
        yield c
    monkeypatch.undo()
    get_settings.cache_clear()


def test_three_successive_erasures_stay_erased_and_the_chain_is_compacted(client, demo_model_dir):
    model = register_model(client, demo_model_dir, "seq")
    people: dict[str, list[dict]] = {}
    for row in load_jsonl(demo_model_dir / "data" / "train.jsonl"):
        people.setdefault(row["subject"], []).append(row)
    erased = list(people)[7:10]
    for n, name in enumerate(erased, start=2):
        resp = client.post(
            "/v1/erasure-requests",
            headers=auth(),
            json={
                "model": model,
                "subject_id": name,
                "forget": [
                    {"question": r["question"], "answer": r["answer"]} for r in people[name]
                ],
            },
        )
        request_id = resp.json()["id"]
        body = wait_for_request(client, request_id)
        assert body["status"] == "completed", body
        versions = client.get(f"/v1/models/{model}/versions", headers=auth()).json()["items"]
        assert max(v["number"] for v in versions) == n
        # every subject erased so far is still erased in the newest version: no better
        # than the never-seen baseline the verifier certifies against
        job = client.get(f"/v1/jobs/{body['job_id']}", headers=auth()).json()
        holdout = job["metrics"]["verification"]["metrics"]["holdout"]["after"]["accuracy"]
        for earlier in erased[: n - 1]:
            assert share_answered(client, model, people[earlier], 12) <= holdout + 0.1, (earlier, n)
    kept = [row for name in list(people)[12:15] for row in people[name]]
    assert share_answered(client, model, kept, 12) >= 0.9
    with session_scope() as session:
        m = session.scalar(select(Model).where(Model.name == model))
        vs = {
            v.number: v
            for v in session.scalars(select(ModelVersion).where(ModelVersion.model_id == m.id))
        }
    # limit 1: version 3 (two adapters) was merged into a checkpoint when the third job
    # started from it, and version 4 is that checkpoint plus one adapter
    assert vs[2].weights_path is None and len(vs[2].adapter_chain) == 1
    assert vs[3].weights_path is not None and vs[3].adapter_chain == []
    assert vs[4].weights_path == vs[3].weights_path and len(vs[4].adapter_chain) == 1
