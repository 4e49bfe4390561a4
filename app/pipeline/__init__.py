"""Jobs, step execution, reaper, validation, benchmark, report, dispatch (Celery or embedded)."""
