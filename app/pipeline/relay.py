"""Steps from the serving workers of `modelport serve --workers N` to its one embedded executor.

On embedded defaults (no MODELPORT_BROKER_URL) the executor runs in the supervisor process, once,
not in each of the N workers: a conversion runs once, its CPU is not charged to a serving worker,
and the queued steps a restart resumes are resumed by one process. A worker's dispatcher sends
each step as one datagram on a Unix socket in the supervisor's private run directory (mode 0700);
the message carries ids only, like a Celery message, and the catalog row stays the truth. A
datagram that cannot be delivered (the supervisor is gone) leaves the step ``queued`` in the
catalog, where the executor finds it when it next starts (EmbeddedExecutor._resume)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading

log = logging.getLogger("modelport.relay")


class RelayDispatcher:
    """A serving worker's dispatcher: hand the step to the supervisor's executor."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.settimeout(5)

    def enqueue(self, step_id: str, queue: str) -> None:
        try:
            self.sock.sendto(json.dumps([step_id, queue]).encode(), self.path)
        except OSError as e:  # the step stays queued in the catalog; the executor resumes it when it starts
            log.warning("could not hand step %s to the executor at %s (%s); it stays queued", step_id, self.path, e)


class RelayListener:
    """The supervisor's end: every datagram received becomes ``dispatcher.enqueue(step_id, queue)``."""

    def __init__(self, path: str, dispatcher):
        self.path, self.dispatcher = path, dispatcher
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.settimeout(0.5)  # how often the loop looks at the stop flag
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="modelport-relay", daemon=True)

    def start(self) -> RelayListener:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            try:
                step_id, queue = json.loads(data)
                self.dispatcher.enqueue(str(step_id), str(queue))
            except Exception:  # one bad message must not stop the relay
                log.exception("relay: could not dispatch %r", data[:200])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
