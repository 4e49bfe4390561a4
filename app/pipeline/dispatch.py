"""Hand a step to whatever runs steps: Celery by task name (the API never imports task modules)."""

from __future__ import annotations


class CeleryDispatcher:
    def __init__(self, celery_app=None, broker_url: str | None = None):
        if celery_app is None:
            from celery import Celery

            celery_app = Celery("modelport-api", broker=broker_url)
            celery_app.conf.update(task_serializer="json", accept_content=["json"], broker_connection_retry=True)
        self.app = celery_app

    def enqueue(self, step_id: str, queue: str) -> None:
        self.app.send_task("modelport.run_step", args=[step_id], queue=queue)
