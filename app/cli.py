"""The `lethe` command line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from app.settings import get_settings

cli = typer.Typer(no_args_is_help=True, help="Lethe: unlearning as a service.")
demo_model_cli = typer.Typer(no_args_is_help=True, help="The built-in demo model.")
certificate_cli = typer.Typer(no_args_is_help=True, help="Unlearning certificates.")
cli.add_typer(demo_model_cli, name="demo-model")
admin_cli = typer.Typer(no_args_is_help=True, help="Tenants and API keys.")
audit_cli = typer.Typer(no_args_is_help=True, help="The audit log.")
jobs_cli = typer.Typer(no_args_is_help=True, help="Operate on unlearning jobs.")
bench_cli = typer.Typer(no_args_is_help=True, help="Benchmarks.")
cli.add_typer(bench_cli, name="bench")
cli.add_typer(jobs_cli, name="jobs")
cli.add_typer(certificate_cli, name="certificate")
cli.add_typer(admin_cli, name="admin")
cli.add_typer(audit_cli, name="audit")


def _logging(level: int = logging.INFO, json_logs: bool | None = None) -> None:
    from app.observability import configure_logging

    configure_logging(level, get_settings().json_logs if json_logs is None else json_logs)


def run_migrations() -> None:
    from app.db.migrate import upgrade_to_head

    settings = get_settings()
    settings.ensure_dirs()
    upgrade_to_head(settings.resolved_database_url)


@cli.command()
def migrate() -> None:
    """Bring the database schema up to date (Alembic)."""
    run_migrations()
    typer.echo("database schema is up to date")


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    worker: Annotated[
        bool,
        typer.Option(
            "--worker/--no-worker", help="run stages in this process (embedded broker only)"
        ),
    ] = True,
    workers: Annotated[
        int, typer.Option(help="server processes (PostgreSQL and Redis only; ~1 per core)")
    ] = 1,
) -> None:
    """Run the HTTP API (and, with the embedded broker, a worker in the same process)."""
    import uvicorn

    from app.api.main import create_served_app
    from app.services import dispatch

    _logging()
    settings = get_settings()
    if settings.resolved_database_url.startswith("sqlite"):
        run_migrations()  # the embedded default sets itself up
    if settings.embedded_broker and not worker:
        dispatch.disable_embedded_worker()
    if settings.admin_key is None:
        typer.echo(f"development admin key (Bearer): {settings.resolved_admin_key()}", err=True)
    if workers > 1:
        if settings.embedded_broker or settings.resolved_database_url.startswith("sqlite"):
            raise typer.BadParameter(
                "several workers need PostgreSQL and Redis", param_hint="--workers"
            )
        uvicorn.run(
            "app.api.main:create_served_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            log_config=None,
            access_log=False,
        )
    else:
        uvicorn.run(create_served_app(), host=host, port=port, log_level="info", log_config=None)


@cli.command()
def worker(
    loglevel: Annotated[str, typer.Option(help="Celery log level")] = "INFO",
    queue: Annotated[
        str,
        typer.Option(
            help="`gpu` (unlearning jobs, one process per GPU) or `webhooks` (deliveries)"
        ),
    ] = "gpu",
) -> None:
    """Run a Celery worker. On `gpu`: one job at a time, each task in a fresh child process
    (so GPU memory is returned between jobs); pin it with CUDA_VISIBLE_DEVICES, one worker
    per GPU. On `webhooks`: concurrent deliveries in threads."""
    if queue not in ("gpu", "webhooks"):
        raise typer.BadParameter("queue must be gpu or webhooks", param_hint="--queue")
    import os

    os.environ["LETHE_DB_NULL_POOL"] = "true"  # before any engine exists in this process
    get_settings.cache_clear()
    settings = get_settings()
    if settings.embedded_broker:
        typer.echo(
            "LETHE_BROKER_URL is 'embedded': `lethe serve` runs the worker itself; "
            "set a Redis URL to run separate workers",
            err=True,
        )
        raise typer.Exit(2)
    _logging()
    from workers.celery_app import celery_app

    pool = (
        ["--pool", "prefork", "--concurrency", "1", "--max-tasks-per-child", "1"]
        if queue == "gpu"
        else ["--pool", "threads", "--concurrency", "8"]
    )
    celery_app.worker_main(
        [
            "worker",
            "-Q",
            queue,
            *pool,
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )


@cli.command()
def scheduler() -> None:
    """Run the maintenance loop alone: batch pending requests, send the outbox, requeue
    stages of dead workers, hand due webhook deliveries to the workers."""
    import threading

    from app.services.recovery import maintain_once

    _logging()
    interval = get_settings().maintenance_interval_s
    logging.getLogger("lethe.scheduler").info("scheduler running every %.1f s", interval)
    stop = threading.Event()
    while not stop.wait(interval):
        maintain_once()


@demo_model_cli.command("build")
def demo_model_build(
    out: Annotated[Path, typer.Option(help="directory to write the model to")],
    size: Annotated[str, typer.Option(help="tiny (tests) or small (demo)")] = "small",
    seed: Annotated[int, typer.Option(help="corpus and training seed")] = 0,
) -> None:
    """Build the demo model: a synthetic corpus of fictitious people and a small
    Llama-style model trained from scratch to memorise it."""
    if size not in ("tiny", "small"):
        raise typer.BadParameter("size must be tiny or small", param_hint="--size")
    from workers.engine.demo_model import build_demo_model

    with _Progress("training") as bar:
        report = build_demo_model(out, size=size, seed=seed, on_progress=bar.update)
    typer.echo(json.dumps(_asdict(report), indent=2))
    typer.echo(f"greedy answer accuracy on trained facts: {report.train_accuracy:.1%}")


@cli.command()
def demo(
    json_output: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    size: Annotated[str, typer.Option(help="demo model size")] = "small",
) -> None:
    """Run the main job on the embedded default: build the demo model if absent, erase one
    fictitious person, verify, publish, and show the certificate."""
    import os

    settings = get_settings()
    if not settings.embedded_broker or not settings.resolved_database_url.startswith("sqlite"):
        # the demo is the embedded default; never touch a production database or queue
        os.environ["LETHE_BROKER_URL"] = "embedded"
        os.environ["LETHE_DATABASE_URL"] = ""
        get_settings.cache_clear()
    from app.demo import run_demo

    _logging(logging.WARNING, json_logs=False)
    run_migrations()
    say = (lambda _m: None) if json_output else typer.echo
    with (
        _Progress("unlearning", quiet=json_output) as bar,
        _Progress("training demo model", quiet=json_output) as build_bar,
    ):

        def on_job(job: object) -> None:
            step, total, status = job.step, job.total_steps, job.status  # type: ignore[attr-defined]
            if status == "unlearning" and total:
                bar.update(step, total, job.loss or 0.0)  # type: ignore[attr-defined]
            elif status in ("verifying", "publishing"):
                bar.close()
                say(f"… {status}")

        result = run_demo(size=size, say=say, on_job=on_job, build_progress=build_bar.update)
    if json_output:
        typer.echo(json.dumps(result, indent=2))
    else:
        _story(result)
    if result["status"] != "completed":
        raise typer.Exit(1)


def _story(r: dict) -> None:  # type: ignore[type-arg]
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.0%}"

    typer.echo("")
    typer.echo(f"Request {r['request_id']}: {r['status']}")
    typer.echo(
        f"  {r['subject']}'s facts answered: {pct(r['forget_accuracy_before'])} before, "
        f"{pct(r['forget_accuracy_after'])} after "
        f"(never-seen people: {pct(r['holdout_accuracy'])})"
    )
    typer.echo(
        f"  Everyone else's facts answered: {pct(r['retain_accuracy_before'])} before, "
        f"{pct(r['retain_accuracy_after'])} after"
    )
    mia = r.get("mia_auc") or {}
    if mia:
        typer.echo(
            "  Membership inference AUC (0.5 = indistinguishable from never-seen people): "
            + ", ".join(f"{k} {v:.2f}" for k, v in mia.items() if v is not None)
        )
    if r.get("relearn_recovery") is not None:
        recovery = r["relearn_recovery"]
        typer.echo(f"  Relearning attack brought back {recovery:.0%} of what was erased")
    if (r.get("attempts") or 0) > 1:
        typer.echo(f"  {r['attempts']} unlearning attempts: a failed verification escalates")
    cert = r["certificate"]
    if cert.get("id"):
        verdict = "PASSED" if cert["passed"] else "FAILED"
        typer.echo(f"  Certificate {cert['id']}: {verdict}, signed with key {cert['key_id']}")
    if r.get("error"):
        typer.echo(f"  Reason: {r['error']}")
    typer.echo(f"  Took {r['seconds']:.0f} s in all. `lethe demo --json` prints the certificate.")


@certificate_cli.command("rotate-key")
def certificate_rotate_key() -> None:
    """Create a new signing key; older keys keep verifying the certificates they signed."""
    from workers.engine.certificates import rotate_signing_key

    key = rotate_signing_key(get_settings().data_dir / "keys")
    typer.echo(f"new signing key {key.key_id}; previous keys kept for verification")


@certificate_cli.command("verify")
def certificate_verify(
    file: Annotated[Path, typer.Argument(help="certificate JSON, or `lethe demo --json` output")],
    keys: Annotated[
        Path | None,
        typer.Option(help="trusted keys: the JSON of GET /v1/certificates/keys (recommended)"),
    ] = None,
) -> None:
    """Check a certificate's Ed25519 signature offline. Exit 0 when valid, 1 when not.
    Without --keys the certificate's own public key is used (proves integrity, not who
    signed); with --keys only those keys are trusted."""
    from workers.engine.certificates import verify

    trusted = None
    if keys is not None:
        try:
            trusted = {k["key_id"]: k["public_key"] for k in json.loads(keys.read_text())["keys"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            typer.echo(f"invalid: cannot read trusted keys {keys}: {exc}", err=True)
            raise typer.Exit(2) from exc

    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        typer.echo(f"invalid: cannot read {file}: {exc}", err=True)
        raise typer.Exit(2) from exc
    if isinstance(data, dict) and isinstance(data.get("certificate"), dict):
        data = data["certificate"]
    if isinstance(data, dict) and isinstance(data.get("envelope"), dict):
        data = data["envelope"]
    ok, reason = verify(data, trusted)
    if not ok:
        typer.echo(f"invalid: {reason}", err=True)
        raise typer.Exit(1)
    doc = json.loads(data["document"])
    typer.echo(
        f"valid: certificate {doc.get('certificate_id')} signed by key {data['key_id']}, "
        f"verdict {doc.get('verdict')}"
    )


@admin_cli.command("create-tenant")
def admin_create_tenant(name: Annotated[str, typer.Argument(help="tenant name")]) -> None:
    """Create a tenant; prints its id."""
    from app.db.session import session_scope
    from app.services import tenancy
    from app.services.errors import LetheError

    try:
        with session_scope() as session:
            tenant = tenancy.create_tenant(session, name, "cli")
            typer.echo(json.dumps({"id": tenant.id, "name": tenant.name}))
    except LetheError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from exc


@admin_cli.command("create-key")
def admin_create_key(
    tenant: Annotated[str, typer.Option(help="tenant id")],
    scope: Annotated[list[str], typer.Option(help="repeat for each scope")],
    name: Annotated[str, typer.Option(help="what the key is for")] = "cli",
) -> None:
    """Create an API key; the secret is printed once and never again."""
    from app.db.session import session_scope
    from app.services import tenancy
    from app.services.errors import LetheError

    try:
        with session_scope() as session:
            key, plaintext = tenancy.create_api_key(session, tenant, name, scope, "cli")
            typer.echo(
                json.dumps(
                    {
                        "id": key.id,
                        "tenant_id": key.tenant_id,
                        "scopes": key.scopes,
                        "key": plaintext,
                    }
                )
            )
    except LetheError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from exc


@admin_cli.command("rotate-keys")
def admin_rotate_keys() -> None:
    """Re-encrypt stored personal data under the current LETHE_SECRET_KEY (the old key must
    still be listed in LETHE_PREVIOUS_SECRET_KEYS); afterwards the old key can go."""
    from app.services.privacy import rotate_ciphertexts

    typer.echo(f"re-encrypted {rotate_ciphertexts()} ciphertext(s) under the current key")


def _job_action(job_id: str, action: str) -> None:
    from app.db.session import session_scope
    from app.services import dispatch, operations
    from app.services.errors import LetheError

    try:
        with session_scope() as session:
            job = operations.get_job(session, job_id)
            if action == "cancel":
                operations.cancel_job(session, job, "cli")
            elif action == "requeue":
                operations.requeue_job(session, job, "cli")
            typer.echo(json.dumps(operations.describe(session, job), indent=2))
    except LetheError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from exc
    dispatch.flush_outbox()


@cli.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def verify(ctx: typer.Context) -> None:
    """Audit any model with Lethe's verifier: --model DIR [--adapter DIR] --forget FILE
    --retain FILE --holdout FILE [--general FILE] [--json] [--policy FILE]. Exit 0 passed,
    1 failed."""
    from workers.engine.standalone import main as audit

    raise typer.Exit(audit(list(ctx.args)))


@bench_cli.command("tofu")
def bench_tofu(
    data: Annotated[Path, typer.Option(help="directory of the TOFU JSON Lines files")],
    split: Annotated[str, typer.Option(help="forget01, forget05 or forget10")] = "forget01",
    authors: Annotated[int, typer.Option(help="authors of `full` to train on (CPU: few)")] = 10,
    method: Annotated[str, typer.Option(help="method name(s), comma-separated")] = "npo",
    json_output: Annotated[bool, typer.Option("--json", help="one JSON object last")] = False,
    cache: Annotated[Path | None, typer.Option(
        help="keep the trained original/reference models here and reuse them")] = None,
    seed: Annotated[int, typer.Option(help="seed of model training and unlearning")] = 0,
    model_size: Annotated[str, typer.Option(
        help="small: the CPU model; medium: ~36 M parameters, for a GPU")] = "small",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    tokenizer_text: Annotated[str, typer.Option(
        help="what the tokenizer is fitted to: retain (the retained authors' text) or "
             "scored (every text scored, the earlier recipe)")] = "retain",
) -> None:
    """TOFU: train an original and a retrained reference model, unlearn the forget split
    through the workers' engine, report forget quality, utility, MIA and wall times."""
    if split not in ("forget01", "forget05", "forget10"):
        raise typer.BadParameter("forget01, forget05 or forget10", param_hint="--split")
    if tokenizer_text not in ("retain", "scored"):
        raise typer.BadParameter("retain or scored", param_hint="--tokenizer-text")
    from workers.engine.tofu import bench_tofu as run

    methods = [m.strip() for m in method.split(",") if m.strip()]
    try:
        run(
            data,
            split=split,
            authors=authors,
            method=methods if len(methods) > 1 else methods[0],
            json_out=json_output,
            cache_dir=cache,
            seed=seed,
            model_size=model_size,
            device=device,
            tokenizer_text=tokenizer_text,
        )
    except (ValueError, FileNotFoundError) as exc:  # bad options or data, said plainly
        typer.echo(f"lethe bench tofu: {exc}", err=True)
        raise typer.Exit(2) from exc


@jobs_cli.command("inspect")
def jobs_inspect(job_id: str) -> None:
    """Show a job's state, claim, heartbeat, progress and requests."""
    _job_action(job_id, "inspect")


@jobs_cli.command("cancel")
def jobs_cancel(job_id: str) -> None:
    """Cancel a queued job, or ask a running one to stop."""
    _job_action(job_id, "cancel")


@jobs_cli.command("requeue")
def jobs_requeue(job_id: str) -> None:
    """Run the job's current stage again (a failed job starts over)."""
    _job_action(job_id, "requeue")


@jobs_cli.command("stuck")
def jobs_stuck() -> None:
    """List active jobs whose worker stopped heartbeating (older than the lease)."""
    from app.db.session import session_scope
    from app.services import operations

    with session_scope() as session:
        rows = [operations.describe(session, j) for j in operations.stuck_jobs(session)]
    typer.echo(json.dumps(rows, indent=2))


@audit_cli.command("verify")
def audit_verify(
    tenant: Annotated[str | None, typer.Option(help="one tenant id (default: all)")] = None,
) -> None:
    """Recompute every tenant's audit hash chain; exit 1 and say which events are wrong."""
    from sqlalchemy import select

    from app.db.models import Tenant
    from app.db.session import session_scope
    from app.services.audit import verify_chain

    bad = 0
    with session_scope() as session:
        ids = [tenant] if tenant else list(session.scalars(select(Tenant.id)))
        for tenant_id in ids:
            problems = verify_chain(session, tenant_id)
            for problem in problems:
                typer.echo(f"tenant {tenant_id}: {problem.problem}", err=True)
            bad += len(problems)
            if not problems:
                typer.echo(f"tenant {tenant_id}: audit chain intact")
    if bad:
        raise typer.Exit(1)


class _Progress:
    """A one-line progress bar on stderr (nothing when quiet or not a terminal-ish use)."""

    def __init__(self, label: str, quiet: bool = False) -> None:
        self.label, self.quiet, self.open = label, quiet, False

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, step: int, total: int, loss: float) -> None:
        if self.quiet or not total:
            return
        width = 30
        filled = int(width * step / total)
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{step}/{total} loss {loss:.4f}"
        )
        sys.stderr.flush()
        self.open = True

    def close(self) -> None:
        if self.open:
            sys.stderr.write("\n")
            self.open = False


def _asdict(obj: object) -> dict:  # type: ignore[type-arg]
    import dataclasses

    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(vars(obj))  # type: ignore[arg-type]


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
