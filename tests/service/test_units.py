"""Fast unit tests of the service layer's building blocks (no database, no model)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from app.services.intake import add_months
from workers.engine import certificates
from workers.engine.qa import PromptTemplate, answer_correct, validate_template


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (datetime(2026, 1, 31, 12, tzinfo=UTC), 1, datetime(2026, 2, 28, 12, tzinfo=UTC)),
        (datetime(2028, 1, 31, tzinfo=UTC), 1, datetime(2028, 2, 29, tzinfo=UTC)),
        (datetime(2026, 11, 28, 7, 30, tzinfo=UTC), 1, datetime(2026, 12, 28, 7, 30, tzinfo=UTC)),
        (datetime(2026, 12, 15, tzinfo=UTC), 1, datetime(2027, 1, 15, tzinfo=UTC)),
        (datetime(2026, 10, 31, tzinfo=UTC), 3, datetime(2027, 1, 31, tzinfo=UTC)),
    ],
)
def test_due_date_is_one_calendar_month_later(start, months, expected):
    assert add_months(start, months) == expected


def test_prompt_template_renders_the_question_and_rejects_bad_templates():
    template = PromptTemplate("Q: {question}\nA: {answer}")
    assert template.prompt("Who?") == "Q: Who?\nA: "
    for bad in ("{answer} {question}", "Q: {question}", "{question} {answer} trailing"):
        with pytest.raises(ValueError):
            validate_template(bad)


def test_answer_matching_is_normalised_but_not_lenient():
    assert answer_correct("Paris.", "paris")
    assert answer_correct("  Paris  , France", "Paris")
    assert not answer_correct("Parisian", "Paris")
    assert not answer_correct("", "Paris")


def test_certificate_signature_detects_tampering_and_wrong_keys(tmp_path):
    key = certificates.load_or_create_signing_key(tmp_path)
    envelope = certificates.sign({"metrics": {"forget": 0.125}, "passed": True}, key)
    assert certificates.verify(envelope) == (True, "valid")
    assert certificates.verify(envelope, {key.key_id: key.public_pem})[0]

    tampered = dict(envelope, document=envelope["document"].replace("0.125", "0.126"))
    ok, reason = certificates.verify(tampered)
    assert not ok and "signature" in reason

    other = certificates.load_or_create_signing_key(tmp_path / "other")
    ok, reason = certificates.verify(envelope, {other.key_id: other.public_pem})
    assert not ok and "unknown signing key" in reason
    swapped = dict(envelope, public_key=other.public_pem)
    assert not certificates.verify(swapped)[0]

    # the same key is reused, and kept for verification
    assert certificates.load_or_create_signing_key(tmp_path).key_id == key.key_id
    assert key.key_id in certificates.public_keys(tmp_path)
    assert json.loads(envelope["document"])["signing_key_id"] == key.key_id


def test_rotated_signing_keys_keep_old_certificates_verifiable(tmp_path):
    old = certificates.load_or_create_signing_key(tmp_path)
    old_cert = certificates.sign({"passed": True}, old)
    new = certificates.rotate_signing_key(tmp_path)
    assert new.key_id != old.key_id
    assert certificates.load_or_create_signing_key(tmp_path).key_id == new.key_id  # newest signs
    trusted = certificates.public_keys(tmp_path)
    assert set(trusted) == {old.key_id, new.key_id}
    assert certificates.verify(old_cert, trusted) == (True, "valid")
    assert certificates.verify(certificates.sign({"passed": True}, new), trusted)[0]


def test_certificate_cli_checks_against_trusted_keys(tmp_path):
    import subprocess
    import sys

    key = certificates.load_or_create_signing_key(tmp_path / "ours")
    stranger = certificates.load_or_create_signing_key(tmp_path / "theirs")
    cert = tmp_path / "cert.json"
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [{"key_id": key.key_id, "public_key": key.public_pem}]}))
    run = [sys.executable, "-m", "app.cli", "certificate", "verify", str(cert), "--keys", str(keys)]
    cert.write_text(json.dumps(certificates.sign({"verdict": "passed"}, key)))
    assert subprocess.run(run, capture_output=True).returncode == 0
    # self-consistent but signed by a key we do not trust
    cert.write_text(json.dumps(certificates.sign({"verdict": "passed"}, stranger)))
    result = subprocess.run(run, capture_output=True, text=True)
    assert result.returncode == 1 and "unknown signing key" in result.stderr


def test_item_digest_names_the_fact_not_the_evidence_supplied_with_it():
    from app.services.privacy import item_digest

    plain = {"question": "Where does Ann live?", "answer": "Oslo"}
    richer = {**plain, "paraphrased_questions": ["Ann lives where?"],
              "paraphrased_answer": "In Oslo", "perturbed_answers": ["Rome"]}
    assert item_digest(richer) == item_digest(plain)
    assert item_digest({**plain, "answer": "Rome"}) != item_digest(plain)


@pytest.mark.parametrize("error", ["OperationalError", "InterfaceError"])
def test_a_dropped_database_connection_answers_503_problem_json(error):
    import sqlalchemy.exc
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from app.api.errors import install

    app = FastAPI()
    install(app)

    @app.get("/boom")
    def boom() -> None:
        raise getattr(sqlalchemy.exc, error)("SELECT 1", {}, Exception("connection is closed"))

    resp = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert resp.status_code == 503
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.headers["retry-after"] == "5"
    assert "database is unavailable" in resp.json()["detail"]


def test_a_connection_lost_after_the_answer_does_not_break_the_response(monkeypatch):
    """The request's session is closed after the route has answered; a connection the
    database dropped in between (a restart) must not turn that answer into an error."""
    import sqlalchemy.exc
    from fastapi import Depends, FastAPI
    from fastapi.testclient import TestClient

    from app.api import deps
    from app.api.errors import install

    closed: list[bool] = []

    class DroppedSession:
        def rollback(self) -> None:  # pragma: no cover - the route succeeds
            raise AssertionError("nothing to roll back")

        def close(self) -> None:
            closed.append(True)
            raise sqlalchemy.exc.OperationalError(
                "ROLLBACK", {}, Exception("terminating connection due to administrator command"))

    monkeypatch.setattr(deps, "get_sessionmaker", lambda: DroppedSession)
    app = FastAPI()
    install(app)

    @app.get("/read")
    def read(session=Depends(deps.get_session)) -> dict[str, str]:
        return {"ok": "yes"}

    resp = TestClient(app).get("/read")  # server exceptions are raised in the test
    assert resp.status_code == 200 and resp.json() == {"ok": "yes"}
    assert closed == [True]
