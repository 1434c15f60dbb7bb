"""The Dockerfile, without a Docker engine: hadolint, then its install steps and CMD replayed."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import httpx

from tests.fakes import free_port

ROOT = Path(__file__).resolve().parent.parent


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or "hadolint"
    out = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_image_runs_as_non_root_on_all_interfaces() -> None:
    steps = dict(instructions())
    assert steps["USER"].split(":")[0] not in ("root", "0")
    cmd = json.loads(steps["CMD"])
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert "curl" not in steps["HEALTHCHECK"] and "wget" not in steps["HEALTHCHECK"]


def test_install_steps_and_cmd_replayed_in_a_fresh_venv(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "VIRTUAL_ENV": str(env_dir)}
    env.pop("PYTHONPATH", None)
    steps = instructions()
    port = free_port()
    for word, rest in steps:
        if word == "COPY":
            *sources, _dest = rest.split()
            for src in sources:
                s = ROOT / src
                if s.is_dir():
                    shutil.copytree(s, app / s.name, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(s, app / s.name)
        elif word == "RUN":
            # The pip step, as written; the user is created by the image, not here.
            install = rest.split("&&")[0].strip()
            assert install.startswith("pip install")
            done = subprocess.run(
                shlex.split(install), cwd=app, env=env, capture_output=True, text=True, timeout=600
            )
            assert done.returncode == 0, done.stderr[-2000:]
    cmd = [c.replace("8080", str(port)) for c in json.loads(dict(steps)["CMD"])]
    run_env = {**env, "LLM_ROUTER_API_KEY": "docker-key", "LLM_ROUTER_CONFIG": ""}
    proc = subprocess.Popen(
        cmd, cwd=app, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        check = json.loads(dict(steps)["HEALTHCHECK"].split("CMD", 1)[1])
        check = [c.replace("8080", str(port)) for c in check]
        assert subprocess.run(check, env=env, timeout=10).returncode == 0
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers={"Authorization": "Bearer docker-key"},
            json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
