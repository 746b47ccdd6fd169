"""What the simulated hosts (`SimulatedAPI`, `SimulatedCDN`) share: a server bound on
loopback when started, served in a daemon thread until stopped, usable as a context manager,
and, for `mirror fake-api`, served in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import threading
from http.server import ThreadingHTTPServer
from typing import Any, Self


class Served:
    """Start, stop and the bound port; subclasses say how they bind (`bind`) and what else
    stopping ends (`closed`)."""

    #: the host as errors name it
    what = "the simulated server"
    _httpd: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def bind(self) -> ThreadingHTTPServer:
        """A bound server whose handlers know this host."""
        raise NotImplementedError

    def closed(self) -> None:
        """Called when stopping, once the server is closed, before its thread is joined."""

    def start(self) -> Self:
        """Bind and serve in a daemon thread; returns self so `api = SimulatedAPI(w).start()`."""
        if self._httpd is None:
            httpd = self.bind()
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (then `closed`); a stopped host may start again."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        self.closed()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def serve_forever(self) -> None:
        """Serve until Ctrl-C or SIGTERM (for `mirror fake-api`), then stop cleanly.

        Both signals stop it whatever disposition the process inherited: a shell starts a
        background job with SIGINT ignored, and it must still stop when told to.
        """
        self.start()
        restore = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                restore[sig] = signal.signal(sig, _raise_interrupt)
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            for sig, previous in restore.items():
                signal.signal(sig, previous)
            self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (an ephemeral one when constructed with port 0)."""
        if self._httpd is None:
            raise RuntimeError(f"{self.what} is not running; call start() first")
        return int(self._httpd.server_address[1])


def _raise_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt
