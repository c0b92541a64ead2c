"""Consumer-driven contracts between the edge (consumer) and the origin (provider).

The consumer side runs the edge's real origin client against Pact's mock
server and writes the pact files. The provider side replays them against a
real origin under hypercorn. The HTTP pact covers every call the edge
makes (JWK set, event feed, catalog policy, entitlement lookup); the
message pact covers the claims of the event batches the origin sends.
Both run in the same session, with no broker.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from pact import Pact, Verifier, match

from edge import EdgeSettings
from edge.app import Edge
from edge.entitlements import EntitlementCache
from edge.policies import ContentUnavailable, Policy
from origin import OriginSettings
from origin import create_app as create_origin
from origin.entitlements import set_entitlement
from origin.store import create_engine, viewers
from segmentgate.stack import SAMPLE_CATALOG
from shared.events import EVENTS_AUDIENCE, event_batch_from_claims
from tests.harness import MEDIA_ROOT, ServedApp, free_port

# NOTE: pact-python 4.2's state and message relay servers call shutdown()
# but not server_close(), so their listening sockets are left for the
# garbage collector to close.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in.*socket:pytest.PytestUnraisableExceptionWarning"
)

CONSUMER = "segmentgate-edge"
PROVIDER = "segmentgate-origin"
EVENTS_PROVIDER = "segmentgate-origin-events"
EDGE_TOKEN = "pact-edge-token"
ADMIN_TOKEN = "pact-admin-token"
# The viewer that the provider state "viewer pact-viewer holds sample" creates.
VIEWER_REF = "pact-viewer"

ED25519_KEY = {
    "kty": "OKP",
    "crv": "Ed25519",
    "x": match.str("HRiATWZLYEdtXsZqKYbql2sKTF0S51ImC1X6uNRxuQ8"),
    "kid": match.str("Jcjd5Czoo4MPGSjNMFt5_xrbLDOmBPjLkIGCGWzxTZ4"),
    "alg": "EdDSA",
    "use": "sig",
}


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def edge_for(url: str) -> Edge:
    return Edge(
        EdgeSettings(origin_url=url, media_root=MEDIA_ROOT, origin_token=EDGE_TOKEN)
    )


def http_pact() -> Pact:
    pact = Pact(CONSUMER, PROVIDER).with_specification("V4")
    auth = {"Authorization": f"Bearer {EDGE_TOKEN}"}
    (
        pact.upon_receiving("a request for the JWK set")
        .given("the origin has a signing key")
        .with_request("GET", "/.well-known/jwks.json")
        .will_respond_with(200)
        .with_body({"keys": match.each_like(ED25519_KEY)}, "application/jwk-set+json")
    )
    # NOTE: Pact applies matching rules to JSON bodies only, and the feed is
    # a JWT; so this checks the request, the status and the media type, and
    # the event pact checks the batch's claims.
    (
        pact.upon_receiving("a request for the event feed")
        .given("the origin has a signing key")
        .with_request("GET", "/v1/events")
        .with_query_parameter("after", "0")
        .with_headers(auth)
        .will_respond_with(200)
        .with_header("Content-Type", "application/jwt")
    )
    (
        pact.upon_receiving("a request for a purchasable item's policy")
        .given("content sample is for sale")
        .with_request("GET", "/v1/catalog/sample")
        .will_respond_with(200)
        .with_body(
            {
                "content_id": "sample",
                "policy": {
                    "kind": "purchase",
                    "preview_seconds": match.number(10),
                    "offline": match.regex("closed", regex="^(open|closed)$"),
                },
            },
            "application/json",
        )
    )
    (
        pact.upon_receiving("a request for unknown content's policy")
        .given("no content nothing")
        .with_request("GET", "/v1/catalog/nothing")
        .will_respond_with(404)
    )
    (
        pact.upon_receiving("an entitlement lookup of an entitled viewer")
        .given("viewer pact-viewer holds sample")
        .with_request("GET", f"/v1/edge/entitlements/{VIEWER_REF}/sample")
        .with_headers(auth)
        .will_respond_with(200)
        .with_body({"granted": True, "version": match.int(1)}, "application/json")
    )
    (
        pact.upon_receiving("an entitlement lookup of a viewer who never bought")
        .given("viewer pact-viewer holds sample")
        .with_request("GET", f"/v1/edge/entitlements/{VIEWER_REF}/trailer")
        .with_headers(auth)
        .will_respond_with(404)
    )
    return pact


def check_edge_against(url: str) -> None:
    """Run the edge's origin calls against ``url`` and check what it makes of them."""

    async def calls() -> None:
        edge = edge_for(url)
        try:
            jwks = await edge._fetch_jwks()
            edge.keys.load(jwks)
            assert len(edge.keys) == 1
            await edge._fetch_feed(0)
            policy = Policy.from_item(await edge._fetch_policy("sample"))
            assert policy.kind == "purchase"
            assert policy.preview_seconds == 10
            assert policy.offline == "closed"
            with pytest.raises(ContentUnavailable):
                await edge._fetch_policy("nothing")
            state = await edge._fetch_entitlement((VIEWER_REF, "sample"))
            assert state.granted
            assert state.version >= 1
            with pytest.raises(ContentUnavailable):
                await edge._fetch_entitlement((VIEWER_REF, "trailer"))
        finally:
            await edge.aclose()

    run(calls())


GRANTED_EVENT = {
    "seq": match.int(7),
    "id": match.str("6f1f7a52-3c1e-4f61-9a57-2b5f1d0c9e11"),
    "type": "entitlement.granted",
    "viewer_ref": match.str(VIEWER_REF),
    "content_id": "sample",
    "version": match.int(1),
    "occurred_at": match.number(1796378400.5),
    "kid": "",
}
WITHDRAWN_EVENT = {
    "seq": match.int(8),
    "id": match.str("0b7c2d14-8e5a-4c3f-b1d2-9a8e7f6c5d4b"),
    "type": "content.withdrawn",
    "viewer_ref": "",
    "content_id": match.str("extra"),
    "version": 0,
    "occurred_at": match.number(1796378401.5),
    "kid": "",
}


def batch(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "iss": "segmentgate-origin",
        "aud": EVENTS_AUDIENCE,
        "iat": match.int(1796378400),
        "exp": match.int(1796378700),
        "events": match.each_like(event),
        "last_seq": match.int(8),
    }


def event_pact() -> Pact:
    pact = Pact(CONSUMER, EVENTS_PROVIDER).with_specification("V4")
    (
        pact.upon_receiving("an entitlement.granted event", "Async")
        .given("viewer pact-viewer holds sample")
        .with_body(batch(GRANTED_EVENT), "application/json")
    )
    (
        pact.upon_receiving("a content.withdrawn event", "Async")
        .given("content extra was withdrawn")
        .with_body(batch(WITHDRAWN_EVENT), "application/json")
    )
    return pact


def apply_batch(body: str | bytes | None, metadata: dict[str, object]) -> None:
    """Apply a batch's claims as the edge's event follower does."""
    assert body is not None
    parsed = event_batch_from_claims(json.loads(body))
    cache = EntitlementCache(ttl=60, capacity=10)
    for event in parsed.events:
        if event.type == "entitlement.granted":
            assert cache.apply(event)
        assert event.seq <= parsed.last_seq or parsed.last_seq == 0


@pytest.fixture(scope="session")
def pact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the consumer side and write both pact files."""
    directory = tmp_path_factory.mktemp("pacts")
    pact = http_pact()
    with pact.serve(addr="127.0.0.1") as server:
        check_edge_against(str(server.url))
    pact.write_file(directory)
    messages = event_pact()
    messages.verify(apply_batch, "Async")
    messages.write_file(directory)
    return directory


def test_edge_writes_http_pact(pact_dir: Path) -> None:
    document = json.loads((pact_dir / f"{CONSUMER}-{PROVIDER}.json").read_text())
    paths = {item["request"]["path"] for item in document["interactions"]}
    assert paths == {
        "/.well-known/jwks.json",
        "/v1/events",
        "/v1/catalog/sample",
        "/v1/catalog/nothing",
        f"/v1/edge/entitlements/{VIEWER_REF}/sample",
        f"/v1/edge/entitlements/{VIEWER_REF}/trailer",
    }


def test_edge_writes_event_pact(pact_dir: Path) -> None:
    document = json.loads((pact_dir / f"{CONSUMER}-{EVENTS_PROVIDER}.json").read_text())
    descriptions = {item["description"] for item in document["interactions"]}
    assert descriptions == {
        "an entitlement.granted event",
        "a content.withdrawn event",
    }


def test_edge_consumer_rejects_unexpected_call() -> None:
    pact = Pact(CONSUMER, PROVIDER).with_specification("V4")
    (
        pact.upon_receiving("a request for the JWK set")
        .with_request("GET", "/.well-known/jwks.json")
        .will_respond_with(200)
        .with_body({"keys": []}, "application/jwk-set+json")
    )
    with pact.serve(addr="127.0.0.1", raises=False) as server:
        edge = edge_for(str(server.url))
        run(_fetch_policy_and_close(edge))
        assert not server.matched
        kinds = {mismatch.type for mismatch in server.mismatches}
        assert kinds == {"RequestNotFound", "MissingRequest"}


async def _fetch_policy_and_close(edge: Edge) -> None:
    try:
        with pytest.raises(Exception):  # noqa: B017 - any failure will do
            await edge._fetch_policy("sample")
    finally:
        await edge.aclose()


class Provider:
    """A real origin under hypercorn, with the provider states the pacts name."""

    def __init__(self, data_dir: Path) -> None:
        self.database_url = f"sqlite+aiosqlite:///{data_dir / 'origin.db'}"
        settings = OriginSettings(
            database_url=self.database_url,
            admin_token=ADMIN_TOKEN,
            edge_token=EDGE_TOKEN,
        )
        self.served = ServedApp(create_origin(settings), free_port(), "/healthz")
        self.admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    @property
    def url(self) -> str:
        return self.served.url

    def set_state(self, state: str, action: str = "setup", **_: Any) -> None:
        if action != "setup":
            return
        if state == "content sample is for sale":
            self._put("sample", SAMPLE_CATALOG["sample"])
        elif state == "viewer pact-viewer holds sample":
            self._put("sample", SAMPLE_CATALOG["sample"])
            run(self._grant(VIEWER_REF, "sample"))
        elif state == "content extra was withdrawn":
            self._put("extra", SAMPLE_CATALOG["trailer"])
            httpx.delete(f"{self.url}/v1/admin/content/extra", headers=self.admin)

    def _put(self, content_id: str, body: dict[str, Any]) -> None:
        response = httpx.put(
            f"{self.url}/v1/admin/content/{content_id}", json=body, headers=self.admin
        )
        response.raise_for_status()

    async def _grant(self, viewer_ref: str, content_id: str) -> None:
        # Viewers get random references from the API, so the state inserts
        # the one the pact names, and grants through the origin's own code.
        engine = create_engine(self.database_url)
        try:
            async with engine.begin() as connection:
                known = (
                    await connection.execute(
                        viewers.select().where(viewers.c.viewer_ref == viewer_ref)
                    )
                ).first()
                viewer_id = known.viewer_id if known else "vwr_" + uuid.uuid4().hex
                if known is None:
                    await connection.execute(
                        viewers.insert().values(
                            viewer_id=viewer_id,
                            viewer_ref=viewer_ref,
                            token_hash=uuid.uuid4().hex,
                            created_at=0.0,
                        )
                    )
                await set_entitlement(
                    connection, viewer_id, content_id, granted=True, purchase_id="pur_1"
                )
        finally:
            await engine.dispose()

    def batch_for(self, event_type: str) -> dict[str, Any]:
        """Return the claims of the feed's batch, keeping events of one type."""
        feed = httpx.get(
            f"{self.url}/v1/events",
            params={"after": 0},
            headers={"Authorization": f"Bearer {EDGE_TOKEN}"},
        )
        feed.raise_for_status()
        jwks = httpx.get(f"{self.url}/.well-known/jwks.json").json()
        kid = jwt.get_unverified_header(feed.text)["kid"]
        key = next(key for key in jwks["keys"] if key["kid"] == kid)
        claims = jwt.decode(
            feed.text,
            jwt.PyJWK(key).key,
            algorithms=[key["alg"]],
            audience=EVENTS_AUDIENCE,
        )
        claims["events"] = [e for e in claims["events"] if e["type"] == event_type]
        return dict(claims)


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[Provider]:
    running = Provider(tmp_path)
    running.served.start()
    try:
        yield running
    finally:
        running.served.stop()


def verify_http(provider: Provider, pact_dir: Path) -> Verifier:
    verifier = (
        Verifier(PROVIDER, host="127.0.0.1")
        .add_transport(url=provider.url)
        .add_source(pact_dir / f"{CONSUMER}-{PROVIDER}.json")
        .state_handler(provider.set_state, teardown=False)
    )
    return verifier.verify()


def events_verifier(provider: Provider, source: Path) -> Verifier:
    """Return a verifier of ``source`` whose messages are the origin's batches."""

    def produce(name: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        # "an entitlement.granted event" names the event type to keep.
        body = json.dumps(provider.batch_for(name.split()[1])).encode()
        return {"contents": body, "metadata": None, "content_type": "application/json"}

    return (
        Verifier(EVENTS_PROVIDER, host="127.0.0.1")
        .message_handler(produce)
        .add_source(source)
        .state_handler(provider.set_state, teardown=False)
    )


def verify_events(provider: Provider, pact_dir: Path) -> Verifier:
    source = pact_dir / f"{CONSUMER}-{EVENTS_PROVIDER}.json"
    return events_verifier(provider, source).verify()


def test_origin_honours_http_pact(provider: Provider, pact_dir: Path) -> None:
    verify_http(provider, pact_dir)


def test_origin_honours_event_pact(provider: Provider, pact_dir: Path) -> None:
    verify_events(provider, pact_dir)


def test_origin_fails_pact_it_breaks(
    provider: Provider, pact_dir: Path, tmp_path: Path
) -> None:
    # A consumer that relies on a field the origin does not send.
    document = json.loads((pact_dir / f"{CONSUMER}-{PROVIDER}.json").read_text())
    for interaction in document["interactions"]:
        if interaction["request"]["path"] == "/v1/catalog/sample":
            body = interaction["response"]["body"]["content"]
            body["policy"]["price_cents"] = 499
    broken = tmp_path / f"{CONSUMER}-{PROVIDER}.json"
    broken.write_text(json.dumps(document))
    verifier = (
        Verifier(PROVIDER, host="127.0.0.1")
        .add_transport(url=provider.url)
        .add_source(broken)
        .state_handler(provider.set_state, teardown=False)
    )
    with pytest.raises(RuntimeError, match="Failed to execute verifier"):
        verifier.verify()
    assert "missing the following keys: price_cents" in verifier.output(strip_ansi=True)


def test_origin_fails_event_pact_it_breaks(
    provider: Provider, pact_dir: Path, tmp_path: Path
) -> None:
    # A consumer that relies on events carrying a field the origin omits.
    source = pact_dir / f"{CONSUMER}-{EVENTS_PROVIDER}.json"
    document = json.loads(source.read_text())
    for interaction in document["interactions"]:
        interaction["contents"]["content"]["events"][0]["region"] = "eu"
    broken = tmp_path / source.name
    broken.write_text(json.dumps(document))
    verifier = events_verifier(provider, broken)
    with pytest.raises(RuntimeError, match="Failed to execute verifier"):
        verifier.verify()
    assert "region" in verifier.output(strip_ansi=True)
