"""Helpers for a Streamlit server on 127.0.0.1, shared by the load test and the test fixtures
that serve the app (tests/e2e/conftest.py, tests/test_ws_client.py)."""

from __future__ import annotations

import socket
import urllib.request

__all__ = ["free_port", "healthy"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it).

    Raises:
        OSError: Nothing can be bound on 127.0.0.1 (a sandbox without loopback networking).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether Streamlit answers its health check (`{url}/_stcore/health`) within `timeout` s."""
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=timeout) as r:
            return bool(r.status == 200)
    except OSError:
        return False
