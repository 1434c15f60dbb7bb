"""Real redis-servers for the tests on free loopback ports (no persistence): a single server,
a 3-master Redis Cluster, and MONITOR to see every command the router sends."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

import pytest

from tests.fakes import free_port


def redis_binary(name: str = "redis-server") -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: `make test` should have installed it")
        pytest.skip(f"{name} is not installed here (make test installs Debian's)")
    return path


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"redis-server on port {port} did not start")


class RedisServer:
    cluster = False

    def __init__(self) -> None:
        self.binary = redis_binary()
        self.port = free_port()
        self.ports = [self.port]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def state(self, prefix: str) -> dict[str, Any]:
        """The config's `state` section for this Redis and a key prefix."""
        return {"backend": "redis", "redis_url": self.url, "prefix": prefix}


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterServer:
    """Three masters (`--cluster-enabled yes`) joined by `redis-cli --cluster create`."""

    cluster = True

    def __init__(self) -> None:
        self.binary, cli = redis_binary(), redis_binary("redis-cli")
        self.dir = tempfile.mkdtemp(prefix="llm-router-cluster-")
        self.ports = [_cluster_port() for _ in range(3)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * 3
        try:
            for i in range(3):
                self.start_node(i)
            for port in self.ports:
                _wait_for_port(port)
            subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip
            self._wait_until_ok(cli)
        except BaseException:
            self.stop()
            raise
        self.port = self.ports[0]
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def _wait_until_ok(self, cli: str) -> None:
        deadline = time.monotonic() + 20
        for port in self.ports:
            while True:
                out = subprocess.run(
                    [cli, "-p", str(port), "cluster", "info"], capture_output=True, text=True
                ).stdout
                if "cluster_state:ok" in out:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster did not come up: {out}")
                time.sleep(0.05)

    def start_node(self, i: int) -> None:
        """Start node i (again: its nodes.conf brings it back into the cluster)."""
        port = self.ports[i]
        self.procs[i] = subprocess.Popen(
            [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--cluster-enabled", "yes", "--dir", self.dir,
             "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", "5000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_for_port(port)

    def stop_node(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None:
            proc.kill()
            proc.wait(10)
            self.procs[i] = None

    def stop(self) -> None:
        for i in range(len(self.procs)):
            self.stop_node(i)
        shutil.rmtree(self.dir, ignore_errors=True)

    def state(self, prefix: str) -> dict[str, Any]:
        return {"backend": "redis", "redis_url": self.url, "prefix": prefix, "cluster": True}


class Monitor:
    """MONITOR on every node of a server: `commands()` returns, split into arguments,
    what they were sent since the last call, in each node's order (with the commands the
    scripts ran, unless `scripts=False`)."""

    def __init__(self, server: RedisServer | RedisClusterServer) -> None:
        self.ports = server.ports
        self.procs = [
            subprocess.Popen(
                [redis_binary("redis-cli"), "-p", str(port), "monitor"],
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for port in self.ports
        ]
        for proc in self.procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "OK"
        self._marks = 0

    def commands(self, scripts: bool = True) -> list[list[str]]:
        """Everything sent since the last call: an ECHO on each node marks the end."""
        self._marks += 1
        marker = f"monitor-mark-{self._marks}"
        out: list[list[str]] = []
        for port, proc in zip(self.ports, self.procs, strict=True):
            subprocess.run(
                [redis_binary("redis-cli"), "-p", str(port), "echo", marker],
                check=True, capture_output=True,
            )  # fmt: skip
            assert proc.stdout is not None
            for line in proc.stdout:
                if marker in line:
                    break
                source, _, command = line.partition("] ")
                if command and (scripts or not source.endswith(" lua")):
                    out.append(shlex.split(command))
        return out

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.communicate(timeout=5)
