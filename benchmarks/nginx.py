"""Run nginx from a temporary directory on a 127.0.0.1 port.

The configurations here are the ones the benchmarks compare: plain static
files, ``secure_link`` (an MD5 of expiry, path and secret, the usual way
operators protect HLS with nginx alone), and the supported auth_request
deployment in ``deploy/nginx-auth-request.conf``.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AUTH_REQUEST_TEMPLATE = REPO / "deploy" / "nginx-auth-request.conf"

_MAIN = """\
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
{servers}
}}
"""

_STATIC = """\
server {{
    listen 127.0.0.1:{port};
    root {root};
    location / {{ }}
}}
"""

_SECURE_LINK = """\
server {{
    listen 127.0.0.1:{port};
    root {root};
    location / {{
        secure_link $arg_md5,$arg_expires;
        secure_link_md5 "$secure_link_expires$uri {secret}";
        if ($secure_link = "") {{ return 403; }}
        if ($secure_link = "0") {{ return 410; }}
    }}
}}
"""


def nginx_binary() -> str | None:
    """Return the nginx executable, or None when it is not installed."""
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None
    )


def secure_link_query(path: str, secret: str, expires: int) -> str:
    """Return the ``md5`` and ``expires`` query that nginx secure_link checks."""
    digest = hashlib.md5(  # noqa: S324 - the scheme nginx secure_link defines
        f"{expires}{path} {secret}".encode()
    ).digest()
    token = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return f"md5={token}&expires={expires}"


def static_server(port: int, root: Path) -> str:
    return _STATIC.format(port=port, root=root)


def secure_link_server(port: int, root: Path, secret: str) -> str:
    return _SECURE_LINK.format(port=port, root=root, secret=secret)


def auth_request_server(port: int, root: Path, edge: str) -> str:
    """Render the supported auth_request deployment for ``edge`` (host:port)."""
    text = AUTH_REQUEST_TEMPLATE.read_text()
    values = {
        "${SEGMENTGATE_LISTEN}": f"127.0.0.1:{port}",
        "${SEGMENTGATE_EDGE}": edge,
        "${SEGMENTGATE_MEDIA_ROOT}": str(root),
    }
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


class Nginx:
    """One nginx master and worker serving ``servers`` until :meth:`stop`.

    ``cpu`` pins both processes to one core with taskset.
    """

    def __init__(self, servers: list[str], cpu: int | None = None) -> None:
        binary = nginx_binary()
        if binary is None:
            raise FileNotFoundError("nginx is not installed")
        self._work = Path(tempfile.mkdtemp(prefix="segmentgate-nginx-"))
        config = self._work / "nginx.conf"
        config.write_text(_MAIN.format(work=self._work, servers="\n".join(servers)))
        command = [binary, "-p", str(self._work), "-c", str(config)]
        if cpu is not None and shutil.which("taskset"):
            command = ["taskset", "-c", str(cpu), *command]
        self._process = subprocess.Popen(  # noqa: S603 - fixed arguments
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def wait_for(self, port: int, timeout: float = 10.0) -> None:
        """Wait until ``port`` accepts connections; raise if nginx exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.errors()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"nginx did not listen on {port} in {timeout:g} s")

    def errors(self) -> str:
        log = self._work / "error.log"
        text = log.read_text() if log.is_file() else ""
        if self._process.poll() is not None and self._process.stderr:
            text += self._process.stderr.read().decode(errors="replace")
        return text[-2000:]

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stderr is not None:
            self._process.stderr.close()
        shutil.rmtree(self._work, ignore_errors=True)
