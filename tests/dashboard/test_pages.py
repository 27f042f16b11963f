"""The dashboard over HTTP (FastAPI TestClient): sign-in and sessions, tenant isolation,
no personal data on any page, the pages' content, and the live event stream."""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import quote

import anyio
import pytest
from sqlalchemy import update

from app.dashboard import auth, live, queries
from app.db.base import utcnow
from app.db.models import Certificate, ErasureRequest, UnlearningJob
from app.db.session import session_scope
from app.services import privacy, tenancy
from tests.conftest import ADMIN_KEY
from tests.dashboard import support


def pages_of(world) -> list[str]:
    """Every page of tenant A's dashboard that the tests walk."""
    a = world.a
    return [
        "/dashboard",
        "/dashboard/requests",
        "/dashboard/requests?overdue=yes",
        f"/dashboard/requests/{world.done_request}",
        f"/dashboard/requests/{a.request_ids[1]}",
        f"/dashboard/requests/{world.done_request}/report",
        f"/dashboard/requests/{world.done_request}/report?format=json",
        "/dashboard/jobs",
        f"/dashboard/jobs/{world.done_job}",
        f"/dashboard/jobs/{world.queued_job}",
        "/dashboard/models",
        "/dashboard/certificates",
        f"/dashboard/certificates/{world.certificate}",
    ]


def cookie_header(resp) -> str:
    headers = [v for k, v in resp.headers.multi_items() if k == "set-cookie"]
    found = [h for h in headers if h.startswith(auth.SESSION_COOKIE + "=")]
    assert len(found) == 1, headers
    return found[0]


# -- sign-in, sessions -----------------------------------------------------------------


def test_pages_redirect_to_sign_in(app, world):
    from fastapi.testclient import TestClient

    with TestClient(app) as anonymous:
        for path in pages_of(world):
            resp = anonymous.get(path, follow_redirects=False)
            assert resp.status_code == 303, path
            assert resp.headers["location"] == "/dashboard/login?next=" + quote(path, safe=""), path
        events = anonymous.get(f"/dashboard/jobs/{world.done_job}/events")
        assert events.status_code == 401
        login = anonymous.get("/dashboard/login")
        assert login.status_code == 200
        assert 'for="api_key"' in login.text and 'type="password"' in login.text


def test_sign_in_sets_a_signed_httponly_lax_cookie_without_the_key(app, world, signed_in):
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        resp = support.sign_in(client, world.a.read)
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard"
    header = cookie_header(resp)
    flags = [f.strip().lower() for f in header.split(";")]
    assert "httponly" in flags and "samesite=lax" in flags and "path=/dashboard" in flags
    assert f"max-age={auth.SESSION_SECONDS}" in flags
    assert "secure" not in flags  # plain http: a Secure cookie would never come back
    value = header.split(";")[0].split("=", 1)[1].strip('"')
    secret = world.a.read.split("_", 2)[2]
    assert world.a.read not in value and secret not in value
    body, _mac = value.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert payload["sub"] == f"key:{world.a.read_key_id}" and payload["tid"] == world.a.id
    assert payload["exp"] - time.time() <= auth.SESSION_SECONDS

    with TestClient(app, base_url="https://testserver") as tls:
        secure = cookie_header(support.sign_in(tls, world.a.read))
    assert "secure" in [f.strip().lower() for f in secure.split(";")]


def test_sign_in_refuses_bad_keys_missing_scope_and_forged_forms(app, world):
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        for key in ("lethe_nope_nope", "", world.a.write_only):
            resp = support.sign_in(client, key)
            assert resp.status_code == 401, key
            assert auth.SESSION_COOKIE + "=" not in resp.headers.get("set-cookie", "")
        refused = support.sign_in(client, world.a.write_only).text
        assert "lacks the" in refused and "requests:read" in refused
        # no token, or a token not bound to this browser's pre-session cookie
        form = client.get("/dashboard/login")
        token = support.login_token(form.text)
        resp = client.post(
            "/dashboard/login", data={"api_key": world.a.read}, follow_redirects=False
        )
        assert resp.status_code == 403
        with TestClient(app) as other:
            resp = other.post(
                "/dashboard/login",
                data={"api_key": world.a.read, "csrf": token},
                follow_redirects=False,
            )
            assert resp.status_code == 403
        # a form posted from another site
        form = client.get("/dashboard/login")
        resp = client.post(
            "/dashboard/login",
            data={"api_key": world.a.read, "csrf": support.login_token(form.text)},
            headers={"Origin": "https://evil.example"},
            follow_redirects=False,
        )
        assert resp.status_code == 403
        # no open redirect after sign-in
        form = client.get("/dashboard/login")
        resp = client.post(
            "/dashboard/login",
            data={
                "api_key": world.a.read,
                "csrf": support.login_token(form.text),
                "next": "//evil.example/x",
            },
            follow_redirects=False,
        )
        assert resp.status_code == 303 and resp.headers["location"] == "/dashboard"


def test_sign_out_needs_the_csrf_token_and_ends_the_session(world, signed_in):
    client = signed_in(world.a.read)
    assert client.get("/dashboard").status_code == 200
    forged = client.post("/dashboard/logout", data={"csrf": "wrong"}, follow_redirects=False)
    assert forged.status_code == 403
    assert client.get("/dashboard", follow_redirects=False).status_code == 200
    page = client.get("/dashboard").text
    token = support.login_token(page)
    resp = client.post("/dashboard/logout", data={"csrf": token}, follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/login"
    assert "max-age=0" in cookie_header(resp).lower()
    assert client.get("/dashboard", follow_redirects=False).status_code == 303


def test_tampered_expired_and_revoked_sessions_are_refused(app, world, signed_in):
    from fastapi.testclient import TestClient

    client = signed_in(world.a.read)
    value = client.cookies.get(auth.SESSION_COOKIE)
    body, mac = value.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))

    def status_with(cookie: str) -> int:
        with TestClient(app) as c:
            c.cookies.set(auth.SESSION_COOKIE, cookie, path="/dashboard")
            return c.get("/dashboard", follow_redirects=False).status_code

    assert status_with(value) == 200
    moved = {**payload, "tid": world.b.id}
    forged_body = base64.urlsafe_b64encode(json.dumps(moved).encode()).decode().rstrip("=")
    assert status_with(f"{forged_body}.{mac}") == 303  # MAC no longer matches
    assert status_with(auth.encode_session(moved)) == 303  # key belongs to tenant A
    assert status_with(auth.encode_session({**payload, "exp": int(time.time()) - 1})) == 303
    assert status_with("garbage") == 303

    # revoking the key ends its sessions at once
    other = signed_in(world.a.full)
    with session_scope() as session:
        key = tenancy.authenticate(session, world.a.full)
        tenancy.revoke_api_key(session, world.a.id, key.actor.removeprefix("key:"), "test")
    assert other.get("/dashboard", follow_redirects=False).status_code == 303
    assert client.get("/dashboard", follow_redirects=False).status_code == 200
    world.a.full = None  # revoked: later tests must not use it


def test_admin_key_sees_the_default_tenant(world, signed_in):
    client = signed_in(ADMIN_KEY)
    page = client.get("/dashboard")
    assert page.status_code == 200 and "default" in page.text
    listing = client.get("/dashboard/requests").text
    assert not any(rid in listing for rid in world.a.request_ids + world.b.request_ids)


# -- tenant isolation and personal data ------------------------------------------------


def test_another_tenants_pages_answer_404_and_lists_never_show_its_ids(world, signed_in):
    a, b = signed_in(world.a.read), signed_in(world.b.read)
    for path in (
        f"/dashboard/requests/{world.done_request}",
        f"/dashboard/requests/{world.done_request}/report",
        f"/dashboard/requests/{world.done_request}/report?format=json",
        f"/dashboard/jobs/{world.done_job}",
        f"/dashboard/jobs/{world.queued_job}",
        f"/dashboard/certificates/{world.certificate}",
    ):
        assert a.get(path).status_code == 200, path
        resp = b.get(path)
        assert resp.status_code == 404, path
        assert "text/html" in resp.headers["content-type"]
    assert b.get(f"/dashboard/jobs/{world.done_job}/events").status_code == 404
    a_ids = {
        *world.a.request_ids,
        world.done_job,
        world.queued_job,
        world.certificate,
        world.version,
    }
    for path in (
        "/dashboard",
        "/dashboard/requests",
        "/dashboard/requests?overdue=no",
        "/dashboard/jobs",
        "/dashboard/models",
        "/dashboard/certificates",
        "/dashboard/requests?model=shared",
    ):
        text = b.get(path).text
        leaked = [i for i in a_ids if i in text or i[:8] in text]
        assert not leaked, (path, leaked)
    # and tenant A does see its own
    assert world.done_request[:8] in a.get("/dashboard/requests").text


def test_no_page_shows_personal_data(world, signed_in):
    client = signed_in(world.a.read)
    for path in pages_of(world):
        resp = client.get(path)
        assert resp.status_code == 200, path
        text = resp.text
        for secret in world.a.pii:
            assert secret not in text, (path, secret)
        assert "Jane Roe" not in text and "Ilvermorny" not in text, path
    # the subject appears only as its stored keyed hash
    page = client.get(f"/dashboard/requests/{world.a.request_ids[1]}").text
    assert privacy.subject_hash(world.a.subjects[1]) in page
    with session_scope() as session:
        row = session.get(ErasureRequest, world.a.request_ids[1])
        assert row.forget_ciphertext is not None  # still encrypted: nothing was decrypted


# -- page content ----------------------------------------------------------------------


def test_overview_counts_deadlines_running_jobs_and_throughput(world, signed_in):
    support.make_overdue(world.a.request_ids[3])
    client = signed_in(world.a.read)
    page = client.get("/dashboard")
    assert page.status_code == 200
    text = page.text
    assert 'href="/dashboard/requests?status=completed"' in text
    assert world.a.request_ids[3][:8] in text.split('id="due-soon"')[0]  # listed as overdue
    assert world.queued_job[:8] in text.split('id="running"')[1]
    data = text.split('id="throughput-data">')[1].split("</script>")[0]
    days = json.loads(data)
    assert len(days) == queries.THROUGHPUT_DAYS
    assert days[-1]["date"] == utcnow().date().isoformat() and days[-1]["completed"] >= 1
    for header, value in (
        ("content-security-policy", "script-src 'self'"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
    ):
        assert value in page.headers[header]


def test_requests_filters_and_cursor_pages(world, signed_in, monkeypatch):
    client = signed_in(world.a.read)
    completed = client.get("/dashboard/requests?status=completed").text
    assert world.done_request[:8] in completed and world.a.request_ids[1][:8] not in completed
    overdue = client.get("/dashboard/requests?overdue=yes").text
    assert world.a.request_ids[3][:8] in overdue and world.done_request[:8] not in overdue
    assert "No request matches" in client.get("/dashboard/requests?model=nope&status=failed").text
    # unknown filter values are ignored rather than failing
    assert client.get("/dashboard/requests?status=bogus&overdue=maybe").status_code == 200
    assert client.get("/dashboard/requests?cursor=garbage").status_code == 422

    monkeypatch.setattr(queries, "PAGE_SIZE", 1)
    seen, url = [], "/dashboard/requests?model=shared"
    while url:
        page = client.get(url).text
        rows = page.split("<tbody>")[1].split("</tbody>")[0]
        seen += [rid for rid in world.a.request_ids if f"/dashboard/requests/{rid}" in rows]
        nxt = page.split('rel="next" href="')
        url = nxt[1].split('"')[0].replace("&amp;", "&") if len(nxt) > 1 else None
        assert url is None or "model=shared" in url  # filters survive paging
    assert sorted(seen) == sorted(world.a.request_ids) and len(seen) == len(set(seen))


def test_request_page_shows_timeline_job_certificate_and_report(world, signed_in):
    client = signed_in(world.a.read)
    page = client.get(f"/dashboard/requests/{world.done_request}").text
    assert "request.received" in page
    assert f"/dashboard/jobs/{world.done_job}" in page
    assert f"/dashboard/certificates/{world.certificate}" in page
    assert f"/dashboard/requests/{world.done_request}/report" in page
    report = client.get(f"/dashboard/requests/{world.done_request}/report").text
    assert "Compliance report" in report and "forget" in report and "0.930" in report
    data = client.get(f"/dashboard/requests/{world.done_request}/report?format=json")
    assert data.headers["content-disposition"].startswith("attachment")
    body = data.json()
    assert body["request"]["id"] == world.done_request
    from workers.engine.certificates import verify

    assert verify(body["certificate"]["envelope"]) == (True, "valid")


def test_job_page_shows_progress_metrics_and_every_attempt(world, signed_in):
    client = signed_in(world.a.read)
    page = client.get(f"/dashboard/jobs/{world.done_job}").text
    assert "Accuracy" in page and "0.930" in page and "0.050" in page
    assert "Attempt 1" in page
    data = json.loads(page.split('id="job-data">')[1].split("</script>")[0])
    rows = data["job"]["verification"]["rows"]
    assert {r["set"] for r in rows} == {"forget", "retain", "holdout"}
    assert data["events"] == f"/dashboard/jobs/{world.done_job}/events"

    # an escalated job lists every attempt; a missing figure reaches the page as null
    with session_scope() as session:
        job = session.get(UnlearningJob, world.queued_job)
        saved = job.metrics
        job.metrics = {
            "attempts": [
                {
                    "attempt": 1,
                    "method": "npo",
                    "config": {"learning_rate": 0.001},
                    "passed": False,
                    "reasons": ["forget accuracy 0.75 above 0.25"],
                    "steps": 20,
                    "final_loss": 1.25,
                },
                {
                    "attempt": 2,
                    "method": "npo",
                    "config": {"learning_rate": 0.003},
                    "passed": True,
                    "steps": 40,
                    "final_loss": 0.5,
                    "unlearning": {"timings": {"training": 12.75, "checks": 3.5}},
                    "verification": support.verification_metrics(None),
                },
            ],
        }
    try:
        page = client.get(f"/dashboard/jobs/{world.queued_job}").text
        assert "Attempt 1" in page and "Attempt 2" in page
        assert "forget accuracy 0.75 above 0.25" in page and "0.003" in page
        data = json.loads(page.split('id="job-data">')[1].split("</script>")[0])
        # where the attempt's unlearning seconds went
        summary = data["job"]["attempt_list"][1]["summary"]
        assert summary["training_seconds"] == 12.75 and summary["checks_seconds"] == 3.5
        assert "training_seconds" in page
        assert (
            data["job"]["attempt_list"][1]["verification"][0]["after"]["mean_probability"] is None
        )
    finally:
        with session_scope() as session:
            session.get(UnlearningJob, world.queued_job).metrics = saved


def test_models_page_draws_the_lineage(world, signed_in):
    client = signed_in(world.a.read)
    page = client.get("/dashboard/models").text
    v1, v2 = page.index(">v1<"), page.index(">v2<")
    assert v1 < v2
    child = page[v2:]
    assert f"/dashboard/jobs/{world.done_job}" in child
    assert f"/dashboard/certificates/{world.certificate}" in child
    assert f'id="version-{world.version}"' in page
    production = page.split(f'id="version-{world.version}"')[0].rsplit("<li", 1)[1]
    assert "lineage__node--production" in production
    # v2 is nested under v1
    assert page.index('class="lineage__children"') < v2


def test_certificate_page_verifies_the_signature_live(world, signed_in):
    client = signed_in(world.a.read)
    page = client.get(f"/dashboard/certificates/{world.certificate}").text
    assert 'badge--passed">valid' in page and "The Ed25519 signature matches" in page
    with session_scope() as session:
        cert = session.get(Certificate, world.certificate)
        original = cert.document
        cert.document = original.replace('"passed":true', '"passed":false')
    try:
        page = client.get(f"/dashboard/certificates/{world.certificate}").text
        assert 'badge--failed">invalid' in page and "signature does not match" in page
    finally:
        with session_scope() as session:
            session.get(Certificate, world.certificate).document = original
    # a malformed stored certificate is shown as invalid, not as an error page
    with session_scope() as session:
        bad = Certificate(
            tenant_id=world.a.id,
            job_id=world.queued_job,
            model_id=session.get(UnlearningJob, world.queued_job).model_id,
            passed=False,
            document="{}",
            signature="",
            key_id="k",
        )
        session.add(bad)
        session.flush()
        bad_id = bad.id
    page = client.get(f"/dashboard/certificates/{bad_id}")
    assert page.status_code == 200 and "invalid" in page.text


def test_static_files_are_a_fixed_set(world, signed_in):
    client = signed_in(world.a.read)
    css = client.get("/dashboard/static/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    js = client.get("/dashboard/static/job.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    for name in ("nope.js", "..%2Fauth.py", "%2E%2E%2Froutes.py"):
        assert client.get(f"/dashboard/static/{name}").status_code == 404, name


# -- the live event stream -------------------------------------------------------------


def test_event_stream_of_a_finished_job_sends_its_state_and_ends(world, signed_in):
    client = signed_in(world.a.read)
    resp = client.get(f"/dashboard/jobs/{world.done_job}/events")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [e for e in resp.text.split("\n\n") if e.startswith("event:")]
    names = [e.split("\n")[0].removeprefix("event: ") for e in events]
    assert names == ["progress", "done"]
    data = json.loads(events[0].split("data: ", 1)[1])
    assert data["status"] == "completed" and data["certificate_id"] == world.certificate
    assert "Verdict" in data["html"]["verification"]


def test_event_stream_pushes_only_changes_with_loss_points(world, monkeypatch):
    """Drive a job row and read the stream's events as the page would get them."""
    monkeypatch.setattr(live, "POLL_SECONDS", 0.05)
    job_id = world.queued_job
    live.history.clear()
    support.set_progress(job_id, 1, 5, 2.0)

    async def run() -> list[tuple[str, dict]]:
        out: list[tuple[str, dict]] = []

        async def disconnected() -> bool:
            return False

        stream = live.job_events(world.a.id, job_id, lambda: True, disconnected)
        step = 1
        async for chunk in stream:
            if not chunk.startswith("event:"):
                continue
            name = chunk.split("\n")[0].removeprefix("event: ")
            out.append((name, json.loads(chunk.split("data: ", 1)[1])))
            if name == "progress" and step < 5:
                step += 1
                await anyio.to_thread.run_sync(support.set_progress, job_id, step, 5, 2.0 / step)
            elif name == "progress":
                with session_scope() as session:
                    session.execute(
                        update(UnlearningJob)
                        .where(UnlearningJob.id == job_id)
                        .values(status="failed", error="stopped by the test", finished_at=utcnow())
                    )
        return out

    try:
        events = anyio.run(run)
    finally:
        with session_scope() as session:
            session.execute(
                update(UnlearningJob)
                .where(UnlearningJob.id == job_id)
                .values(
                    status="queued", error=None, finished_at=None, step=0, total_steps=0, loss=None
                )
            )
    progress = [d for n, d in events if n == "progress"]
    assert [d["step"] for d in progress[:5]] == [1, 2, 3, 4, 5]  # each change once
    assert [d["point"]["loss"] for d in progress[:5]] == [2.0, 1.0, 2.0 / 3, 0.5, 0.4]
    assert progress[-1]["status"] == "failed" and events[-1][0] == "done"
    assert [p["step"] for p in live.history.get(job_id)] == [1, 2, 3, 4, 5]


def test_event_stream_stops_for_another_tenant_or_a_signed_out_session(world, monkeypatch):
    async def first(tenant_id: str, allowed: bool) -> str:
        async def disconnected() -> bool:
            return False

        async for chunk in live.job_events(
            tenant_id, world.done_job, lambda: allowed, disconnected
        ):
            if chunk.startswith("event:"):
                return chunk
        return ""

    assert anyio.run(first, world.a.id, True).startswith("event: progress")
    assert anyio.run(first, world.b.id, True).startswith("event: gone")
    monkeypatch.setattr(live, "REAUTH_SECONDS", 0)  # the session is re-checked at once
    ended = anyio.run(first, world.a.id, False)
    assert ended.startswith("event: gone") and "signed out" in ended


@pytest.mark.parametrize("value,expected", [(float("nan"), None), (1.5, 1.5)])
def test_finite_makes_json_the_browser_can_parse(value, expected):
    assert queries.finite({"x": [value]}) == {"x": [expected]}
