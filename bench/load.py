"""Intake load benchmark: POST /v1/erasure-requests against `lethe serve` on PostgreSQL and
Redis, driven from a separate process over loopback.

    python bench/load.py --model-dir DIR [--requests 6000] [--concurrency 32]
                         [--server-workers 2] [--max-seconds 60]

Creates a fresh database on the local PostgreSQL, starts the API (no GPU workers: tasks
queue in Redis), registers the demo model, fires a bounded number of requests (each with
its own subject id) within a bounded time, then checks that every accepted request is
stored exactly once, audited exactly once, and that the audit hash chain verifies. Prints
one JSON object with requests/s and latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
ADMIN = "bench-admin-key-" + uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes
) -> tuple[int, bytes, bool]:
    """One request on a keep-alive connection: (status, body, whether the server keeps
    the connection open). Only what this server sends is understood: Content-Length
    bodies, no chunking."""
    writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
    status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines if line)
    if "content-length" not in headers:
        raise RuntimeError(f"response without Content-Length: {headers}")
    payload = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split(" ", 2)[1]), payload, headers.get("connection") != "close"


def drive(
    url: str,
    model: str,
    total: int,
    concurrency: int,
    max_seconds: float,
    out: multiprocessing.Queue,  # type: ignore[type-arg]
    tag: str,
) -> None:
    """The load generator, in its own process: ``total`` POSTs, ``concurrency`` at once,
    each on its own keep-alive connection. Written against asyncio streams rather than an
    HTTP client library: it shares the machine's cores with the server it measures, and
    httpx spends several times the CPU per request."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/erasure-requests HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\n"
        "Content-Length: "
    ).encode()

    async def main() -> None:
        latencies: list[float] = []
        codes: dict[int, int] = {}
        accepted: list[str] = []
        counter = iter(range(total))
        deadline = time.perf_counter() + max_seconds

        async def one_worker() -> None:
            conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
            for i in counter:
                if time.perf_counter() > deadline:
                    break
                body = json.dumps(
                    {
                        "model": model,
                        "subject_id": f"subject-{tag}-{i}",
                        "forget": [
                            {"question": f"Where does subject {i} live?", "answer": f"Town {i}"}
                        ],
                    }
                ).encode()
                t0 = time.perf_counter()
                try:
                    async with asyncio.timeout(30):
                        if conn is None:
                            conn = await asyncio.open_connection(host, int(port))
                        code, payload, keep = await _post(*conn, head, body)
                except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                    # status 0, not accepted: if the server stored it all the same, the
                    # exactly-once check fails
                    print(f"request {i}: {exc!r}", file=sys.stderr)
                    code, payload, keep = 0, b"", False
                latencies.append(time.perf_counter() - t0)
                codes[code] = codes.get(code, 0) + 1
                if code == 202:
                    accepted.append(json.loads(payload)["id"])
                if not keep and conn is not None:
                    conn[1].close()
                    conn = None
            if conn is not None:
                conn[1].close()

        started = time.perf_counter()
        await asyncio.gather(*(one_worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        latencies.sort()
        out.put(
            {
                "sent": len(latencies),
                "seconds": elapsed,
                "codes": codes,
                "accepted_ids": accepted,
                "p50_ms": 1000 * statistics.median(latencies),
                "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
                "max_ms": 1000 * latencies[-1],
            }
        )

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model-dir", required=True, type=Path, help="a demo model directory")
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--server-workers", type=int, default=2)
    ap.add_argument("--max-seconds", type=float, default=60.0)
    ap.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    args = ap.parse_args()

    db = f"lethe_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db}"'))
    url = args.postgres.rsplit("/", 1)[0] + "/" + db
    data_dir = Path(f"/tmp/{db}")
    env = {
        **os.environ,
        "LETHE_DATABASE_URL": url,
        "LETHE_BROKER_URL": args.redis,
        "LETHE_ADMIN_KEY": ADMIN,
        "LETHE_DATA_DIR": str(data_dir),
        "LETHE_SECRET_KEY": base64.b64encode(os.urandom(32)).decode(),
        "LETHE_RATE_LIMIT": "1000000/minute",
        "LETHE_JSON_LOGS": "true",
    }
    subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        env=env,
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(args.server_workers),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/livez", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        resp = httpx.post(
            f"{base}/v1/models",
            headers={"Authorization": f"Bearer {ADMIN}"},
            json={
                "name": "bench",
                "path": str(args.model_dir),
                "retain_path": str(args.model_dir / "data" / "train.jsonl"),
                "holdout_path": str(args.model_dir / "data" / "holdout.jsonl"),
            },
            timeout=60,
        )
        resp.raise_for_status()
        # warm-up, not measured
        queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
        warm = multiprocessing.Process(
            target=drive, args=(base, "bench", 200, 8, 30, queue, "warm")
        )
        warm.start()
        warm_result = queue.get()
        warm.join()
        gen = multiprocessing.Process(
            target=drive,
            args=(base, "bench", args.requests, args.concurrency, args.max_seconds, queue, "run"),
        )
        gen.start()
        result = queue.get()
        gen.join()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    ids = result.pop("accepted_ids") + warm_result.pop("accepted_ids")
    verify = subprocess.run(
        [sys.executable, "-m", "app.cli", "audit", "verify"],
        env=env,
        cwd=ROOT,
        capture_output=True,
    )
    engine = create_engine(url)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT id, subject_hash FROM erasure_requests")).all()
        audited = (
            conn.execute(
                text("SELECT entity_id FROM audit_events WHERE action = 'request.received'")
            )
            .scalars()
            .all()
        )
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{db}" WITH (FORCE)'))
    stored_ids = [row[0] for row in stored]
    report = {
        "requests_per_second": round(result["sent"] / result["seconds"], 1),
        "p50_ms": round(result["p50_ms"], 1),
        "p99_ms": round(result["p99_ms"], 1),
        "max_ms": round(result["max_ms"], 1),
        "sent": result["sent"],
        "status_codes": result["codes"],
        "accepted": len(ids),
        "stored": len(stored_ids),
        "accepted_stored_exactly_once": sorted(ids) == sorted(stored_ids)
        and len(set(row[1] for row in stored)) == len(stored),
        "stored_audited_exactly_once": sorted(audited) == sorted(stored_ids),
        "audit_chain_intact": verify.returncode == 0,
        "concurrency": args.concurrency,
        "server_workers": args.server_workers,
        "cpu_cores": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    checks = ("accepted_stored_exactly_once", "stored_audited_exactly_once", "audit_chain_intact")
    if not all(report[c] for c in checks):
        sys.exit(1)


if __name__ == "__main__":
    main()
