"""Celery on Redis: JSON only, acks late, prefetch 1, time limits per queue with the broker's
visibility timeout above them. Queues by hardware (and toolchain): cpu, intel, gpu, apple, cpu.tf …"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from app import host
from app.config import get_settings

settings = get_settings()
QUEUES = host.queues()
LONGEST = max(settings.timeout_for(q) for q in QUEUES)

app = Celery("modelport", broker=settings.broker_url or "redis://127.0.0.1:6379/0", include=["workers.tasks"])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_ignore_result=True,
    result_backend=None,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue="cpu",
    task_queues=[Queue(q) for q in QUEUES],
    # the sandbox enforces each queue's limit (MODELPORT_CONVERT_TIMEOUT_S, MODELPORT_QUEUE_TIMEOUTS);
    # Celery's hard limit is a backstop above the longest, and the broker's visibility timeout above that
    task_time_limit=int(LONGEST) + 300,
    broker_transport_options={"visibility_timeout": max(settings.celery_visibility_timeout_s, int(LONGEST) + 600)},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)
