"""What viewers get while the edge cannot reach the origin, and after.

The edge talks to the origin through a TCP proxy that can refuse, hang or
respond 503, and receives no pushes, so it only learns from polling the feed
through that proxy. Short intervals make the stages of an outage fit in a
few seconds: degraded after 0.6 s of silence, grace for 1.5 s more.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from shared.keys import SigningKey
from shared.tokens import PlaybackClaims, encode_playback_token
from tests.harness import (
    MEDIA_ROOT,
    FaultProxy,
    RunningStack,
    Viewer,
    assert_problem,
    free_port,
    running_stack,
)

ADMIN = {"Authorization": "Bearer test-admin-token"}
LATE_SEGMENT = "v180/seg_010.ts"


@pytest.fixture(scope="module")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    for name, source in (
        ("sample", "sample"),
        ("trailer", "trailer"),
        ("open", "sample"),
    ):
        (root / name).symlink_to(MEDIA_ROOT / source, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def outage(
    tmp_path_factory: pytest.TempPathFactory, media_root: Path
) -> Iterator[tuple[RunningStack, FaultProxy]]:
    origin_port = free_port()
    proxy = FaultProxy(origin_port).start()
    edge_options = {
        "origin_url": proxy.url,
        "sync_interval": 0.1,
        "stale_after": 0.6,
        "grace_period": 1.5,
        "origin_timeout": 0.3,
        "origin_reset_timeout": 0.5,
        "policy_ttl": 0.2,
    }
    with running_stack(
        tmp_path_factory.mktemp("outage"),
        media_root=media_root,
        origin_port=origin_port,
        edge_options=edge_options,
        origin_options={"edge_urls": ()},
    ) as running:
        body = {
            "title": "Paid, plays on when the origin is away",
            "entry": "master.m3u8",
            "policy": {
                "kind": "purchase",
                "price": {"amount": "1.00", "currency": "EUR"},
                "preview_seconds": 10,
                "offline": "open",
            },
        }
        origin = running.stack.origin_url
        assert httpx.put(
            f"{origin}/v1/admin/content/open", json=body, headers=ADMIN
        ).is_success
        yield running, proxy
    proxy.stop()


def signed_url(edge: httpx.Client, viewer: Viewer, content_id: str, name: str) -> str:
    master = edge.get(str(viewer.session(content_id)["playlist_url"]))
    assert master.status_code == 200, master.text
    variant = next(line for line in master.text.splitlines() if line.startswith("v180"))
    media = edge.get(str(master.url.join(variant)))
    segment = next(line for line in media.text.splitlines() if line.startswith(name))
    return str(media.url.join(segment))


def edge_health(edge: httpx.Client) -> dict[str, object]:
    return dict(edge.get("/_edge/healthz").json())


def wait_for(edge: httpx.Client, predicate, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate(edge_health(edge)):
        assert time.monotonic() < deadline, edge_health(edge)
        time.sleep(0.05)


@pytest.mark.parametrize("mode", ["refuse", "hang", "error"])
def test_outage_grace_then_offline_mode_then_recovery(
    outage: tuple[RunningStack, FaultProxy], mode: str
) -> None:
    running, proxy = outage
    buyer = Viewer(running.stack.origin_url)
    browser = Viewer(running.stack.origin_url)
    with httpx.Client(base_url=running.stack.edge_url, timeout=5) as edge:
        wait_for(edge, lambda health: health["status"] == "ok")
        buyer.purchase("sample")
        buyer.purchase("open")
        wait_for(edge, lambda health: health["status"] == "ok")
        paid = signed_url(edge, buyer, "sample", "seg_010")
        paid_open = signed_url(edge, buyer, "open", "seg_010")
        preview_early = signed_url(edge, browser, "sample", "seg_000")
        preview_late = signed_url(edge, browser, "sample", "seg_010")
        for url in (paid, paid_open, preview_early):
            assert edge.get(url).status_code == 200

        proxy.set_mode(mode)
        wait_for(edge, lambda health: health["status"] == "degraded")
        health = edge_health(edge)
        if health["origin"]["within_grace"]:  # type: ignore[index]
            # Within grace: entitled viewers keep watching, and it is counted.
            assert edge.get(paid).status_code == 200

        wait_for(edge, lambda health: not health["origin"]["within_grace"])
        # Past grace: closed content stops with a typed, retryable response ...
        response = edge.get(paid)
        assert_problem(response, 503, "origin-unreachable")
        assert response.headers["retry-after"]
        # ... open content plays on, and previews never needed the origin.
        assert edge.get(paid_open).status_code == 200
        assert edge.get(preview_early).status_code == 200
        assert_problem(edge.get(preview_late), 402, "preview-ended")
        # A token signed by a key the edge never saw cannot be checked now.
        claims = PlaybackClaims(
            "ps_n", "sample", "vr_n", int(time.time()) + 60, True, 0, 0
        )
        unknown = encode_playback_token(claims, SigningKey.generate("EdDSA"))
        path = urlsplit(paid).path.rsplit("/", 2)[0] + "/master.m3u8"
        assert_problem(
            edge.get(path, params={"sg": unknown}), 503, "origin-unreachable"
        )
        decisions = edge_health(edge)["origin"]["degraded_decisions"]  # type: ignore[index]
        assert decisions["closed"] >= 1
        assert decisions["open"] >= 1

        proxy.set_mode("pass")
        wait_for(edge, lambda health: health["status"] == "ok")
        assert edge.get(paid).status_code == 200
    buyer.close()
    browser.close()


def test_revocation_during_outage_applies_on_reconnect(
    outage: tuple[RunningStack, FaultProxy],
) -> None:
    running, proxy = outage
    buyer = Viewer(running.stack.origin_url)
    with httpx.Client(base_url=running.stack.edge_url, timeout=5) as edge:
        wait_for(edge, lambda health: health["status"] == "ok")
        purchase = buyer.purchase("sample")
        paid = signed_url(edge, buyer, "sample", "seg_010")
        assert edge.get(paid).status_code == 200

        proxy.set_mode("refuse")
        buyer.refund(str(purchase["purchase_id"]))  # the edge cannot hear it
        wait_for(edge, lambda health: health["status"] == "degraded")
        proxy.set_mode("pass")
        # The edge reads the feed before it reports itself healthy again, so
        # the refund made while it was cut off applies no later than that.
        wait_for(edge, lambda health: health["status"] == "ok")
        assert_problem(edge.get(paid), 402, "preview-ended")
    buyer.close()
