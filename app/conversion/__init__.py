"""Conversions: edges declared in :mod:`app.conversion.registry`, planned by
:mod:`app.conversion.planner`, run in a sandboxed subprocess by :mod:`app.sandbox.parent`.

Nothing here knows HTTP, the catalog or the queue: edges take paths and options and return paths
and reports, so they can run under another toolchain's interpreter."""
