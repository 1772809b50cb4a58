"""The unit tier: no network, no database server, no subprocess (SQLite files are fine).

Every test here runs with socket connections and process starts refused, so a test that
reaches for a server fails at once, naming what it reached for, instead of passing slowly.
"""

import socket
import subprocess
from typing import Any

import pytest


def _refuse(what: str) -> Any:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a unit test may not {what}: {args[1:] or kwargs}")

    return refused


@pytest.fixture(autouse=True)
def no_network_no_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse inet socket connections and new processes for the length of the test."""
    original_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            self.close()
            raise AssertionError(f"a unit test may not connect to {address}")
        return original_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse("connect"))
    monkeypatch.setattr(subprocess.Popen, "_execute_child", _refuse("start a process"))
