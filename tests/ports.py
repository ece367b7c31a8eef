"""Free loopback ports for services a test starts."""

import socket

_GIVEN: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now and this test process has not handed out before: a test that
    starts several services asks for several ports before any of them binds, and the kernel may offer
    the same one twice."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port
