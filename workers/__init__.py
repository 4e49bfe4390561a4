"""Celery workers for the hardware queues (cpu, intel, gpu, apple). Tasks take ids and call
``app.pipeline.jobs``; see ../shared/DESIGN.md."""
