"""A TCP proxy that can cut a link and restore it: the network between two boxes, under test control."""

from __future__ import annotations

import contextlib
import socket
import threading


class LinkProxy:
    """Listens on a loopback port and forwards to ``target_port`` until ``cut``; ``heal`` restores it.

    A cut drops every open connection mid-stream and refuses new ones (accepted, then closed at
    once), which is what a box sees when the Wi-Fi between it and its peer goes away.
    """

    def __init__(self, target_port: int | None = None) -> None:
        self.target_port = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._up = threading.Event()
        self._up.set()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name=f"proxy:{self.port}").start()

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def cut(self) -> None:
        self._up.clear()
        with self._lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def heal(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self.up or self.target_port is None:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            # A relay must not hold bytes back: with Nagle on, each request's second segment waited
            # for the first one's delayed ACK, 40 ms a round trip that no store network adds.
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
