"""`segmentgate demo` as a newcomer runs it: start, follow the printed steps, stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx

from tests.harness import REPO, free_port


def test_demo_prints_working_steps_and_stops_on_interrupt() -> None:
    origin_port, edge_port = free_port(), free_port()
    env = {**os.environ, "SEGMENTGATE_ADMIN_TOKEN": "demo-admin"}
    process = subprocess.Popen(
        [sys.executable, "-m", "segmentgate", "demo",
         "--origin-port", str(origin_port), "--edge-port", str(edge_port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Press Ctrl+C" in line:
                break
        text = "".join(lines)
        assert "Press Ctrl+C" in text, text
        assert "admin token: demo-admin" in text
        storefront = f"http://127.0.0.1:{origin_port}/"
        instructions = text[text.index("Storefront:") :]
        assert instructions.startswith(f"Storefront: {storefront} ")
        viewer_token = re.search(r"VT='([^']+)'", text).group(1)  # type: ignore[union-attr]
        url = re.search(r"URL='([^']+)'", text).group(1)  # type: ignore[union-attr]
        assert url.startswith(f"http://127.0.0.1:{edge_port}/sample/master.m3u8?sg=")

        with httpx.Client(timeout=10) as client:
            assert client.get(url).status_code == 200
            page = client.get(storefront)
            assert page.status_code == 200
            assert "/storefront/hls.min.js" in page.text
            player = client.get(f"{storefront}storefront/hls.min.js")
            assert player.status_code == 200, "run `make storefront` for hls.js"
            # The purchase exactly as the printed curl command sends it.
            command = re.search(
                r"(curl -s -X POST \S+/v1/purchases.*?)\n\n", text, re.S
            )
            assert command is not None
            purchase = client.post(
                f"http://127.0.0.1:{origin_port}/v1/purchases",
                headers={
                    "Authorization": f"Bearer {viewer_token}",
                    "Idempotency-Key": "demo-1",
                    "Content-Type": "application/json",
                },
                content=b'{"content_id": "sample", "payment_method": "pm_card_visa"}',
            )
            assert purchase.status_code == 201, purchase.text
            assert purchase.json()["status"] == "granted"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
            process.stdout.close()
    assert process.returncode == 0, "".join(lines)
