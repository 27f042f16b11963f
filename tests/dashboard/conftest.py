"""Dashboard fixtures: the app with a dispatch transport that only records (the tests
move jobs along by hand), and two tenants with keys, requests and one finished job."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.services import dispatch
from tests.dashboard import support


class RecordingTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, task: str, job_id: str) -> None:
        self.sent.append((task, job_id))


@dataclass
class World:
    a: support.TenantWorld
    b: support.TenantWorld
    # tenant A: a finished job with a signed certificate and a published version 2, and
    # a second job still queued
    done_job: str
    done_request: str
    certificate: str
    version: str
    queued_job: str


@pytest.fixture(scope="module")
def app(lethe_env) -> Iterator[FastAPI]:
    from app.api.main import create_app

    saved = dispatch._transport
    dispatch._transport = RecordingTransport()  # no stage runs: the tests drive the rows
    yield create_app()
    dispatch._transport = saved


@pytest.fixture(scope="module")
def api(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def world(api: TestClient, demo_model_dir) -> Iterator[World]:
    a = support.make_tenant(api, "a", demo_model_dir)
    b = support.make_tenant(api, "b", demo_model_dir)
    first = support.file_request(api, a, 0)
    done_job = support.job_of(first)
    support.set_progress(done_job, 10, 10, 0.42)
    certificate = support.issue_certificate(done_job)
    version = support.publish(done_job)
    # published: the next requests form the next job
    for n in range(1, 4):
        support.file_request(api, a, n)
    queued_job = support.job_of(a.request_ids[1])
    for n in range(3):
        support.file_request(api, b, n)
    yield World(a, b, done_job, first, certificate, version, queued_job)
    support.retire(a.id, b.id)


@pytest.fixture
def signed_in(app: FastAPI):
    """A factory: a fresh browser-like client signed in with the given key."""
    clients: list[TestClient] = []

    def make(key: str, base_url: str = "http://testserver") -> TestClient:
        client = TestClient(app, base_url=base_url)
        clients.append(client)
        resp = support.sign_in(client, key)
        assert resp.status_code == 303, resp.text
        return client

    yield make
    for client in clients:
        client.close()
