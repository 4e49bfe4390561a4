"""Edge implementations; each runs inside the sandbox (app.conversion.run)."""
