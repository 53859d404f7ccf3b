"""The app as a real server, for the browser tests and the memory benchmark: ``streamlit run
app.py`` from the project folder (so that its .streamlit/config.toml applies), with its own
cache, runs and temporary folders."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(base: Path, *arguments: str, timeout: float = 90,
              data: Path | None = None) -> tuple[subprocess.Popen, int, dict[str, Path]]:
    """The server, its port and its folders under ``base`` (cache, runs, tmp; its log is
    ``base/server.log``), once it answers its health check; on ``data`` (BUSI_DATA) when given,
    else on the demo data. Raises RuntimeError when it does not answer."""
    folders = {name: base / name for name in ("cache", "runs", "tmp")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    environment = os.environ | {"BUSI_CACHE": str(folders["cache"]), "BUSI_RUNS": str(folders["runs"]),
                                "TMPDIR": str(folders["tmp"]), "PYTHONDONTWRITEBYTECODE": "1"}
    environment.pop("BUSI_DATA", None)
    if data is not None:
        environment["BUSI_DATA"] = str(data)
    with open(base / "server.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port",
                                    str(port), *arguments], cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                return process, port, folders
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("streamlit did not start: " + (base / "server.log").read_text())
