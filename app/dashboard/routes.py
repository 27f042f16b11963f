"""The dashboard's routes under ``/dashboard``: sign-in/out, overview, requests, jobs (with
live progress), models and certificates. Server-rendered HTML that works without
JavaScript; charts and live progress are drawn in the browser from JSON the page embeds
or the job's event stream sends. Every query is scoped to the signed-in key's tenant.
"""

from __future__ import annotations

import json
import mimetypes
from typing import Annotated
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from app.api.deps import SessionDep
from app.dashboard import auth, live, queries
from app.dashboard.render import SECURITY_HEADERS, STATIC_DIR, page
from app.db.models import JobStatus, Model, ModelVersion, RequestStatus
from app.db.session import get_sessionmaker
from app.services import ratelimit, reports
from app.services.errors import InvalidInput, NotFound
from app.services.tenancy import Principal

router = APIRouter(prefix="/dashboard", include_in_schema=False)

REQUEST_STATUSES = [s.value for s in RequestStatus]
JOB_STATUSES = [s.value for s in JobStatus]
MAX_FORM_BYTES = 16 * 1024


# -- helpers ---------------------------------------------------------------------------


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(
        "/dashboard/login?" + urlencode({"next": target}),
        status_code=303,
        headers={"Cache-Control": "no-store"},
    )


def _viewer(request: Request, session: SessionDep) -> auth.Viewer | Response:
    """The signed-in viewer, or the response to send instead (sign-in page, 429)."""
    viewer = auth.viewer_of(request, session)
    if viewer is None:
        return _to_login(request)
    retry_after = ratelimit.check(viewer.principal.actor)
    if retry_after is not None:
        response = page(
            request,
            "error.html",
            429,
            viewer=viewer,
            title="Too many requests",
            message=f"This API key's rate limit is used up; try again in {retry_after} s.",
        )
        response.headers["Retry-After"] = str(retry_after)
        return response
    return viewer


def _not_found(request: Request, viewer: auth.Viewer, what: str) -> Response:
    # another tenant's row looks exactly like a missing one
    return page(
        request,
        "error.html",
        404,
        viewer=viewer,
        title="Not found",
        message=f"There is no {what} with that id in {viewer.tenant_name}.",
    )


def _bad_cursor(request: Request, viewer: auth.Viewer) -> Response:
    return page(
        request,
        "error.html",
        422,
        viewer=viewer,
        title="Invalid page link",
        message="That page link is not one the dashboard made; start again from the first page.",
    )


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body (the dashboard's forms post nothing else)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}


# -- sign-in / sign-out ----------------------------------------------------------------


def _login_page(request: Request, next_url: str, error: str = "", status: int = 200) -> Response:
    nonce, token = auth.new_login_form()
    response = page(
        request,
        "login.html",
        status,
        viewer=None,
        next_url=next_url,
        error=error,
        title="Sign in",
        login_token=token,
    )
    auth.set_login_cookie(response, request, nonce)
    return response


@router.get("/login")
def login_form(request: Request, session: SessionDep, next: str | None = None) -> Response:
    """The sign-in form (straight to the overview when already signed in)."""
    if auth.viewer_of(request, session) is not None:
        return RedirectResponse(auth.safe_next(next), status_code=303)
    return _login_page(request, auth.safe_next(next))


def _check_key(presented: str) -> tuple[Principal | None, str]:
    with get_sessionmaker()() as session:
        return auth.sign_in(session, presented)


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the API key typed in; on success set the session cookie."""
    form = await _form(request)
    next_url = auth.safe_next(form.get("next"))
    if not auth.same_origin(request) or not auth.login_token_ok(request, form.get("csrf")):
        return _login_page(request, next_url, "The sign-in form expired; please try again.", 403)
    client = request.client.host if request.client else "unknown"
    retry_after = ratelimit.check(f"dashboard-sign-in:{client}")
    if retry_after is not None:
        return _login_page(
            request, next_url, f"Too many sign-in attempts; try again in {retry_after} s.", 429
        )
    principal, why = await run_in_threadpool(_check_key, form.get("api_key", ""))
    if principal is None:
        return _login_page(request, next_url, why, 401)
    response = RedirectResponse(next_url, status_code=303)
    auth.set_session_cookie(response, request, auth.new_session(principal))
    auth.clear_cookie(response, request, auth.LOGIN_COOKIE)
    return response


def _current(request: Request) -> auth.Viewer | None:
    with get_sessionmaker()() as session:
        return auth.viewer_of(request, session)


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session: the cookie is cleared (a copy of it still expires on its own)."""
    form = await _form(request)
    viewer = await run_in_threadpool(_current, request)
    if viewer is not None and (
        not auth.same_origin(request) or not auth.csrf_ok(viewer, form.get("csrf"))
    ):
        return page(
            request,
            "error.html",
            403,
            viewer=viewer,
            title="Not signed out",
            message="The sign-out form expired; reload the page and try again.",
        )
    response = RedirectResponse("/dashboard/login", status_code=303)
    auth.clear_cookie(response, request)
    return response


# -- pages -----------------------------------------------------------------------------


@router.get("")
def overview(request: Request, session: SessionDep) -> Response:
    """Requests by status, overdue and due-soon requests, running jobs, throughput."""
    viewer = _viewer(request, session)
    if isinstance(viewer, Response):
        return viewer
    data = queries.overview(session, viewer.principal.tenant_id)
    return page(
        request,
        "overview.html",
        viewer=viewer,
        title="Overview",
        o=data,
        due_soon_days=queries.DUE_SOON_DAYS,
        throughput_days=queries.THROUGHPUT_DAYS,
    )


@router.get("/requests")
def requests_page(
    request: Request,
    session: SessionDep,
    status: str = "",
    model: str = "",
    overdue: str = "",
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    """Erasure requests, newest first, filterable, one cursor page at a time."""
    viewer = _viewer(request, session)
    if isinstance(viewer, Response):
        return viewer
    tenant_id = viewer.principal.tenant_id
    names = queries.model_names(session, tenant_id)
    filters = queries.RequestFilters(
        status=status if status in REQUEST_STATUSES else "",
        model=model if model in names.values() else "",
        overdue=overdue if overdue in ("yes", "no") else "",
    )
    try:
        result = queries.list_requests(
            session, tenant_id, filters, cursor or None, queries.PAGE_SIZE
        )
    except InvalidInput:
        return _bad_cursor(request, viewer)
    return page(
        request,
        "requests.html",
        viewer=viewer,
        title="Erasure requests",
        rows=result.items,
        next_cursor=result.next_cursor,
        filters=filters,
        statuses=REQUEST_STATUSES,
        models=sorted(names.values()),
        model_names=names,
        paged=bool(cursor),
        is_overdue=queries.is_overdue,
    )


@router.get("/requests/{request_id}")
def request_page(request_id: str, request: Request, session: SessionDep) -> Response:
    """One request: details, timeline, its job and certificate."""
    viewer = _viewer(request, session)
    if isinstance(viewer, Response):
        return viewer
    try:
        report = reports.compliance_report(session, viewer.principal.tenant_id, request_id)
        row = queries.get_request(session, viewer.principal.tenant_id, request_id)
    except NotFound:
        return _not_found(request, viewer, "erasure request")
    job = queries.get_job(session, viewer.principal.tenant_id, row.job_id) if row.job_id else None
    return page(
        request,
        "request.html",
        viewer=viewer,
        title=f"Request {request_id[:8]}",
        r=report,
        row=row,
        job=job,
        overdue=queries.is_overdue(row),
    )


@router.get("/requests/{request_id}/report")
def report_page(
    request_id: str,
    request: Request,
    session: SessionDep,
    format: Annotated[str, Query(pattern="^(html|json)$")] = "html",
) -> Response:
    """The compliance report (as ``/v1/erasure-requests/{id}/report``), in the dashboard
    or as the JSON file to archive and check offline."""
    viewer = _viewer(request, session)
    if isinstance(viewer, Response):
        return viewer
    try:
        report = reports.compliance_report(session, viewer.principal.tenant_id, request_id)
    except NotFound:
        return _not_found(request, viewer, "erasure request")
    if format == "json":
        return Response(
            json.dumps(queries.finite(report), indent=2, sort_keys=True),
            media_type="application/json",
            headers={
                **SECURITY_HEADERS,
                "Content-Disposition": f'attachment; filename="report-{request_id}.json"',
            },
        )
    return page(
        request,
        "report.html",
        viewer=viewer,
        title=f"Report {request_id[:8]}",
        r=report,
        rows=queries.verification_rows(report["verification"]),
    )


@router.get("/jobs")
def jobs_page(
    request: Request,
    session: SessionDep,
    status: str = "",
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    """Unlearning jobs, newest first, by status, one cursor page at a time."""
    viewer = _viewer(request, session)
    if isinstance(viewer, Response):
        return viewer
    tenant_id = viewer.principal.tenant_id
    status = status if status in JOB_STATUSES else ""
    try:
        result = queries.list_jobs(session, tenant_id, status, cursor or None, queries.PAGE_SIZE)
    except InvalidInput:
        return _bad_cursor(request, viewer)
    return page(
        request,
        "jobs.html",
        viewer=viewer,
        title="Unlearning jobs",
        rows=result.items,
        next_cursor=result.next_cursor,
        status=status,
        statuses=JOB_STATUSES,
        model_names=queries.model_names(session, tenant_id),
        paged=bool(cursor),
    )


@router.get("/jobs/{job_id}")
def job_page(job_id: str, request: Request, session: SessionDep) -> Response:
    """One job: live progress, loss curve, verification before/after, every attempt."""
    viewer = _viewer(request, session)
    if isinstance(viewer, Response):
        return viewer
    tenant_id = viewer.principal.tenant_id
    try:
        job = queries.get_job(session, tenant_id, job_id)
    except NotFound:
        return _not_found(request, viewer, "job")
    live.observe(job)
    snapshot = queries.job_snapshot(job)
    model = session.get(Model, job.model_id)
    parent = session.get(ModelVersion, job.parent_version_id)
    published = (
        session.get(ModelVersion, job.published_version_id) if job.published_version_id else None
    )
    data = {
        "job": snapshot,
        "history": live.page_history(job.id, snapshot),
        "events": f"/dashboard/jobs/{job.id}/events",
    }
    return page(
        request,
        "job.html",
        viewer=viewer,
        title=f"Job {job_id[:8]}",
        job=job,
        s=snapshot,
        data=data,
        model=model,
        parent=parent,
        published=published,
        request_ids=queries.job_request_ids(session, tenant_id, job.id),
    )


@router.get("/jobs/{job_id}/events")
def job_events(job_id: str, request: Request, session: SessionDep) -> Response:
    """Server-sent events with the job's progress while its page is open."""
    viewer = auth.viewer_of(request, session)
    if viewer is None:
        return Response("not signed in", status_code=401, media_type="text/plain")
    tenant_id = viewer.principal.tenant_id
    try:
        queries.get_job(session, tenant_id, job_id)
    except NotFound:
        return Response("no such job", status_code=404, media_type="text/plain")
    session.close()  # the stream opens a short session per poll; hold none meanwhile

    def still_allowed() -> bool:
        current = _current(request)
        return current is not None and current.principal.tenant_id == tenant_id

    return StreamingResponse(
        live.job_events(tenant_id, job_id, still_allowed, request.is_disconnected),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/models")
def models_page(request: Request, session: SessionDep) -> Response:
    """Each model's versions as a lineage: parent → child, producing job, certificate."""
    viewer = _viewer(request, session)
    if isinstance(viewer, Response):
        return viewer
    return page(
        request,
        "models.html",
        viewer=viewer,
        title="Models",
        lineages=queries.lineages(session, viewer.principal.tenant_id),
    )


@router.get("/certificates")
def certificates_page(
    request: Request,
    session: SessionDep,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    viewer = _viewer(request, session)
    if isinstance(viewer, Response):
        return viewer
    try:
        result = queries.list_certificates(
            session, viewer.principal.tenant_id, cursor or None, queries.PAGE_SIZE
        )
    except InvalidInput:
        return _bad_cursor(request, viewer)
    return page(
        request,
        "certificates.html",
        viewer=viewer,
        title="Certificates",
        rows=result.items,
        next_cursor=result.next_cursor,
        paged=bool(cursor),
        model_names=queries.model_names(session, viewer.principal.tenant_id),
    )


@router.get("/certificates/{certificate_id}")
def certificate_page(certificate_id: str, request: Request, session: SessionDep) -> Response:
    """A certificate's contents and its signature verified now."""
    viewer = _viewer(request, session)
    if isinstance(viewer, Response):
        return viewer
    try:
        view = queries.certificate_view(session, viewer.principal.tenant_id, certificate_id)
    except NotFound:
        return _not_found(request, viewer, "certificate")
    model = session.get(Model, view.certificate.model_id)
    return page(
        request,
        "certificate.html",
        viewer=viewer,
        title=f"Certificate {certificate_id[:8]}",
        v=view,
        model=model,
        rows=queries.verification_rows(view.document),
    )


# -- static files ----------------------------------------------------------------------

# read once; a missing folder (an install without the files) serves nothing rather than
# failing the whole app at import
_STATIC = {p.name: p for p in STATIC_DIR.glob("*") if p.is_file()}


@router.get("/static/{name}")
def static(name: str) -> Response:
    """The dashboard's CSS and JS (a fixed set of files; nothing else is served)."""
    path = _STATIC.get(name)
    if path is None:
        return Response("not found", status_code=404, media_type="text/plain")
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return FileResponse(
        path,
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
