"""Response shapes."""

from __future__ import annotations

from typing import Any

from app.catalog.tables import Model


def model_out(m: Model) -> dict[str, Any]:
    return {
        "id": m.id,
        "name": m.name,
        "format": m.format,
        "format_title": m.inspection.get("format_title"),
        "digest": m.digest,
        "size_bytes": m.size_bytes,
        "file_count": m.file_count,
        "primary_file": m.primary_file,
        "is_directory": m.is_directory,
        "original_filename": m.original_filename,
        "files": [{"path": f.path, "sha256": f.sha256, "size_bytes": f.size_bytes} for f in m.files],
        "metadata": m.user_metadata,
        "warnings": m.warnings,
        "inspection": m.inspection,
        "created_at": m.created_at.isoformat(),
        "links": {"self": f"/v1/models/{m.id}", "download": f"/v1/models/{m.id}/download"},
    }
