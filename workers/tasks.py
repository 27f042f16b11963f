"""Celery entry points, as thin as the HTTP routes: each receives a job id and runs the
stage's service function, which re-reads the job and does nothing if it moved on."""

from __future__ import annotations

from app.services import jobs, webhooks
from workers.celery_app import celery_app


def run_stage(task: str, job_id: str) -> None:
    jobs.STAGES[task](job_id)


@celery_app.task(name="lethe.unlearn")
def unlearn(job_id: str) -> None:
    jobs.run_unlearn(job_id)


@celery_app.task(name="lethe.verify")
def verify(job_id: str) -> None:
    jobs.run_verify(job_id)


@celery_app.task(name="lethe.deliver_webhook")
def deliver_webhook(delivery_id: str) -> None:
    webhooks.deliver(delivery_id)


@celery_app.task(name="lethe.publish")
def publish(job_id: str) -> None:
    jobs.run_publish(job_id)
