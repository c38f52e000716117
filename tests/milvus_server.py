"""A real Milvus server process on loopback for tests, and a TCP proxy that can drop its connections.

The server is Milvus standalone (Go/C++ binary, embedded etcd, local storage) from the PyPI
package ``milvus`` (in the ``dev`` extra). Each component registers 127.0.0.1, so all its
traffic, internal included, stays on loopback. Its ports are picked free by the package.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode", "indexCoord")


class MilvusUnavailable(RuntimeError):
    """The server package is not installed or the server did not start (the reason is the message)."""


class MilvusServerProcess:
    """``start()`` a Milvus standalone server with its data under ``base``; ``stop()`` kills it and removes ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self._server = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        return int(self._server.listen_port)

    def start(self, timeout: float = 120.0) -> MilvusServerProcess:
        try:
            from milvus import MilvusServer, __version__
        except ImportError as e:
            raise MilvusUnavailable(f"the PyPI package 'milvus' (embedded Milvus server) is not installed: {e}") from None
        self.version = __version__
        server = MilvusServer(wait_for_started=False)
        server.set_base_dir(str(self.base))
        for component in COMPONENTS:
            server.config.set(f"{component}.ip", "127.0.0.1")
        server.start()  # unpacks the binary into base/bin, writes the config, spawns `milvus run standalone`
        self._server = server
        deadline = time.monotonic() + timeout
        health = f"http://127.0.0.1:{server.webservice_port}/healthz"
        while time.monotonic() < deadline:
            if server.server_proc.poll() is not None:
                log = self.log_tail()
                self.stop()
                raise MilvusUnavailable(f"milvus exited with {server.server_proc.returncode if server.server_proc else '?'}: {log}")
            try:
                with urllib.request.urlopen(health, timeout=2) as reply:
                    if b"OK" in reply.read():
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise MilvusUnavailable(f"milvus did not report healthy within {timeout:.0f}s")

    def log_tail(self, lines: int = 5) -> str:
        path = self.base / "logs" / "milvus-stderr.log"
        text = path.read_text(errors="replace") if path.is_file() else ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        if self._server is not None:
            proc = self._server.server_proc
            self._server.stop()  # SIGTERM, then SIGKILL after 1 s
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            self._server = None
        shutil.rmtree(self.base, ignore_errors=True)


class FaultProxy:
    """Forwards TCP connections from a free loopback port to ``target``; can drop them on demand.

    ``drop_after(n)``: once ``n`` more bytes went from clients to the server, every open
    connection is closed at once (mid-request). With ``refuse=True`` new connections are then
    accepted and closed immediately, until :meth:`heal`.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._budget: int | None = None
        self._refuse_after_drop = False
        self.refusing = False
        self.drops = 0
        self.sent = 0  # bytes forwarded from clients to the server
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def drop_after(self, n_bytes: int, *, refuse: bool) -> None:
        with self._lock:
            self._budget, self._refuse_after_drop = n_bytes, refuse

    def heal(self) -> None:
        with self._lock:
            self.refusing, self._budget = False, None

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self._drop_all()

    def _drop_all(self) -> None:
        with self._lock:
            sockets, self._open = list(self._open), set()
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client:
                    with self._lock:
                        self.sent += len(data)
                        if self._budget is not None:
                            if len(data) >= self._budget:
                                data, self._budget = data[: self._budget], 0
                                cut = True
                            else:
                                self._budget -= len(data)
                                cut = False
                        else:
                            cut = False
                    if cut:
                        dst.sendall(data)  # part of the request reaches the server, then the line goes dead
                        with self._lock:
                            self.drops += 1
                            self._budget = None
                            self.refusing = self._refuse_after_drop
                        self._drop_all()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self._lock:
                self._open -= {src, dst}


def in_ci() -> bool:
    return os.environ.get("CI") == "true"
