"""What an API key costs per inference request: the fast path's key check, side by side with no
check at all and with an uncached check (a catalog query per request), in one run.

    .venv/bin/python bench/auth.py [--n 20000]

Rows: ``cached`` is what /predict and /v2/.../infer pay once a key has been seen (the target: under
20 µs); ``open`` is authentication off (no key exists); ``uncached`` verifies against the catalog
(SQLite here) every time, the cost the cache saves. Prints µs per check and the ratios."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def per_call_us(fn, n: int) -> float:
    for _ in range(min(n, 200)):
        fn()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()
    from app import auth
    from app.catalog.db import Database, upgrade
    from app.config import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        db = Database(settings.resolved_database_url)
        upgrade(db.engine)
        open_auth = auth.Authenticator(db, settings)
        open_auth.authenticate(None)  # learns that no key exists
        open_us = per_call_us(lambda: open_auth.cached(None) or open_auth.authenticate(None), args.n)
        _, token = auth.create_key(db, settings, project="bench", scope="read")
        header = f"Bearer {token}"
        a = auth.Authenticator(db, settings)
        a.authenticate(header)
        cached_us = per_call_us(lambda: a.cached(header) or a.authenticate(header), args.n)
        uncached_us = per_call_us(lambda: a._verify(token), max(200, args.n // 50))
        db.dispose()
    print(f"{'row':<10} {'µs/check':>10} {'vs open':>9}")
    for name, us in (("open", open_us), ("cached", cached_us), ("uncached", uncached_us)):
        print(f"{name:<10} {us:>10.2f} {us / open_us:>8.1f}x")
    print(f"cached key check: {cached_us:.2f} µs ({'under' if cached_us < 20 else 'OVER'} the 20 µs target); "
          f"the cache saves {uncached_us / cached_us:.0f}x over a catalog query per request")


if __name__ == "__main__":
    main()
