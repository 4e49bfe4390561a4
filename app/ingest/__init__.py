"""Upload -> archives -> inspection -> blobs -> catalog row."""
