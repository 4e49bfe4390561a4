"""Edge implementations; each runs inside the sandbox (app.sandbox.child)."""
