"""A built-in payment provider for development, demos and tests.

It behaves like Stripe's PaymentIntents API with manual capture, and takes
Stripe's test payment methods:

==========================================  =====================================
``pm_card_visa``, ``_mastercard``, ``_amex``  authorized, then captured
``pm_card_chargeDeclined``                  declined (``generic_decline``)
``pm_card_chargeDeclinedInsufficientFunds``  declined (``insufficient_funds``)
``pm_card_chargeDeclinedExpiredCard``       declined (``expired_card``)
``pm_card_authenticationRequired``          ``requires_action``: needs 3D Secure
``pm_card_us``, ``_de``, ``_jp``, ...       authorized, then captured; the card is
(38 countries, see ``COUNTRY_CARDS``)       issued in the country that it names
==========================================  =====================================

An intent that requires action names a page of the origin in
``next_action_url`` (see :mod:`origin.sandbox_issuer`), where the viewer
approves or fails the issuer's authentication as on a bank's 3D Secure
page. Approval authorizes the intent (``requires_capture``); failure
leaves it ``requires_payment_method`` with the decline code
``payment_intent_authentication_failure``, as Stripe's test cards do.

Every card is issued in the United States unless its name says otherwise,
and each payment method stands for one card number, with its own
fingerprint. An intent created with ``request_three_d_secure`` returns
``requires_action`` for any card, as an issuer that runs 3-D Secure would.

Authorizations lapse after ``authorization_seconds`` (Stripe's default is
seven days), when the intent becomes ``canceled`` with the reason
``automatic``. Results are kept per idempotency key, as Stripe keeps them,
so a retry with the same key replays the first response. State lives in
memory, or in a JSON file when ``state_path`` is set, so that it outlives
the origin process as a real provider's state would. Origin replicas on one
machine may share that file: each call reads it and writes it back under an
exclusive ``flock`` on ``<state_path>.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from origin.providers.base import (
    CANCELED,
    REQUIRES_ACTION,
    REQUIRES_CAPTURE,
    REQUIRES_CONFIRMATION,
    REQUIRES_PAYMENT_METHOD,
    SUCCEEDED,
    IntentRequest,
    PaymentDeclined,
    PaymentIntent,
    PaymentMethodDetails,
    PaymentProviderError,
    PaymentStateError,
    Refund,
    UnknownPaymentMethod,
    to_minor_units,
)
from origin.providers.faults import SandboxFaults

APPROVED = frozenset({"pm_card_visa", "pm_card_mastercard", "pm_card_amex"})
DECLINED = {
    "pm_card_chargeDeclined": "generic_decline",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_chargeDeclinedExpiredCard": "expired_card",
}
AUTHENTICATION_REQUIRED = frozenset({"pm_card_authenticationRequired"})
# Stripe's test payment methods named after their card's issuing country.
COUNTRY_CARDS = {
    f"pm_card_{code.lower()}": code
    for code in (
        "US AR BR CA MX AT BE CH CZ DE DK EE ES FI FR GB GR IE IT LT LU LV NL "
        "NO PL PT RO SE SI SK AU HK IN JP MY NZ SG TH"
    ).split()
}
KNOWN_PAYMENT_METHODS = (
    APPROVED | DECLINED.keys() | AUTHENTICATION_REQUIRED | COUNTRY_CARDS.keys()
)
CANCELABLE = frozenset(
    {REQUIRES_PAYMENT_METHOD, REQUIRES_CONFIRMATION, REQUIRES_ACTION, REQUIRES_CAPTURE}
)
SEVEN_DAYS = 7 * 24 * 3600.0
# Stripe's last_payment_error code after a failed 3D Secure authentication.
AUTHENTICATION_FAILED = "payment_intent_authentication_failure"
# The origin serves the issuer's page for each authentication id here.
AUTHENTICATION_PATH = "/v1/sandbox/authentications/"


class AuthenticationNotFound(PaymentProviderError):
    """Raised when no intent waits for the authentication id."""


class AuthenticationClosed(PaymentProviderError):
    """Raised when the authentication was already completed another way,
    or its intent no longer requires action (canceled, for example).

    ``result`` is the earlier result, "approved" or "failed", if there was one.
    """

    def __init__(self, message: str, result: str | None) -> None:
        super().__init__(message)
        self.result = result


class SandboxProvider:
    name = "sandbox"

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        authorization_seconds: float = SEVEN_DAYS,
        faults: SandboxFaults | None = None,
        state_path: Path | None = None,
    ) -> None:
        self.faults = faults or SandboxFaults()
        self._clock = clock
        self._authorization_seconds = authorization_seconds
        self._state_path = state_path
        self._intents: dict[str, dict[str, Any]] = {}
        self._results: dict[str, dict[str, Any]] = {}
        self._read_state()

    def _read_state(self) -> None:
        if self._state_path is not None and self._state_path.exists():
            state = json.loads(self._state_path.read_text())
            self._intents = state["intents"]
            self._results = state["results"]

    @contextlib.contextmanager
    def _shared_state(self) -> Iterator[None]:
        """Lock the state file and read it, so that other processes' changes
        are seen. Writes inside reach the file before the lock ends.

        The lock is never held across an ``await``, so two calls in one
        process cannot wait on each other.
        """
        if self._state_path is None:
            yield
            return
        lock_path = self._state_path.with_suffix(".lock")
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._read_state()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    async def create_intent(
        self, request: IntentRequest, idempotency_key: str
    ) -> PaymentIntent:
        if request.payment_method not in KNOWN_PAYMENT_METHODS:
            raise UnknownPaymentMethod(request.payment_method)
        amount = to_minor_units(request.amount, request.currency)
        params = [amount, request.currency.lower(), request.payment_method]
        if request.request_three_d_secure:
            params.append("request_three_d_secure")

        def create() -> dict[str, Any]:
            intent_id = "pi_sandbox_" + secrets.token_hex(12)
            self._intents[intent_id] = {
                "id": intent_id,
                "status": REQUIRES_CONFIRMATION,
                "amount": amount,
                "currency": request.currency.lower(),
                "payment_method": request.payment_method,
                "purchase_id": request.purchase_id,
                "capture_before": None,
                "amount_received": 0,
                "amount_refunded": 0,
                "cancellation_reason": None,
                "decline_code": None,
                "request_three_d_secure": request.request_three_d_secure,
                "captures": 0,
                "refunds": 0,
            }
            return self._intents[intent_id]

        result = await self._call("create_intent", idempotency_key, params, create)
        return _intent(result)

    async def authorize(self, intent_id: str, idempotency_key: str) -> PaymentIntent:
        def confirm() -> dict[str, Any]:
            intent = self._expect(intent_id, REQUIRES_CONFIRMATION)
            method = intent["payment_method"]
            if (
                intent.get("request_three_d_secure")
                or method in AUTHENTICATION_REQUIRED
            ):
                intent["status"] = REQUIRES_ACTION
                authentication_id = "sa_" + secrets.token_urlsafe(18)
                intent["authentication_id"] = authentication_id
                intent["next_action_url"] = AUTHENTICATION_PATH + authentication_id
                return intent
            if method in DECLINED:
                intent["status"] = REQUIRES_PAYMENT_METHOD
                intent["decline_code"] = DECLINED[method]
                raise PaymentDeclined(DECLINED[method], "Your card was declined.")
            intent["status"] = REQUIRES_CAPTURE
            intent["capture_before"] = self._clock() + self._authorization_seconds
            return intent

        result = await self._call("authorize", idempotency_key, [intent_id], confirm)
        return _intent(result)

    async def complete_authentication(
        self, authentication_id: str, approved: bool
    ) -> PaymentIntent:
        """Record the viewer's result on the issuer's page; return the intent.

        Completing it again with the same result returns the intent as it
        is now. Raise :class:`AuthenticationNotFound` for an unknown id and
        :class:`AuthenticationClosed` when the intent no longer waits for
        this answer.
        """
        intent = self._find_authentication(authentication_id)
        result = "approved" if approved else "failed"
        earlier = intent.get("authentication_result")
        if earlier == result:
            return _intent(intent)
        if earlier is not None or intent["status"] != REQUIRES_ACTION:
            raise AuthenticationClosed(
                f"the authentication of {intent['id']} is closed: the payment "
                f"intent is {intent['status']}",
                earlier,
            )
        intent["authentication_result"] = result
        if approved:
            intent["status"] = REQUIRES_CAPTURE
            intent["capture_before"] = self._clock() + self._authorization_seconds
        else:
            intent["status"] = REQUIRES_PAYMENT_METHOD
            intent["decline_code"] = AUTHENTICATION_FAILED
        intent["next_action_url"] = None
        self._save()
        return _intent(intent)

    def describe_authentication(self, authentication_id: str) -> dict[str, Any]:
        """Return a copy of the intent that waits for ``authentication_id``."""
        return dict(self._find_authentication(authentication_id))

    async def capture(self, intent_id: str, idempotency_key: str) -> PaymentIntent:
        def capture() -> dict[str, Any]:
            intent = self._expect(intent_id, REQUIRES_CAPTURE)
            intent["status"] = SUCCEEDED
            intent["amount_received"] = intent["amount"]
            intent["captures"] += 1
            return intent

        result = await self._call("capture", idempotency_key, [intent_id], capture)
        return _intent(result)

    async def void(self, intent_id: str, idempotency_key: str) -> PaymentIntent:
        def cancel() -> dict[str, Any]:
            intent = self._expect(intent_id, *CANCELABLE)
            intent["status"] = CANCELED
            intent["cancellation_reason"] = "requested_by_customer"
            intent["next_action_url"] = None
            return intent

        result = await self._call("void", idempotency_key, [intent_id], cancel)
        return _intent(result)

    async def refund(self, intent_id: str, idempotency_key: str) -> Refund:
        def refund() -> dict[str, Any]:
            intent = self._expect(intent_id, SUCCEEDED)
            if intent["amount_refunded"]:
                raise PaymentStateError(
                    f"charge of {intent_id} has already been refunded", SUCCEEDED
                )
            intent["amount_refunded"] = intent["amount_received"]
            intent["refunds"] += 1
            return {
                "id": "re_sandbox_" + secrets.token_hex(12),
                "status": SUCCEEDED,
                "amount": intent["amount_refunded"],
            }

        result = await self._call("refund", idempotency_key, [intent_id], refund)
        return Refund(result["id"], result["status"], result["amount"])

    async def retrieve(self, intent_id: str) -> PaymentIntent:
        await self.faults.before("retrieve")
        with self._shared_state():
            intent = self._load(intent_id)
        await self.faults.after("retrieve")
        return _intent(intent)

    async def payment_method_details(self, payment_method: str) -> PaymentMethodDetails:
        if payment_method not in KNOWN_PAYMENT_METHODS:
            raise UnknownPaymentMethod(payment_method)
        await self.faults.before("payment_method")
        digest = hashlib.sha256(payment_method.encode()).hexdigest()
        details = PaymentMethodDetails(
            payment_method=payment_method,
            fingerprint="sandbox" + digest[:10],
            country=COUNTRY_CARDS.get(payment_method, "US"),
        )
        await self.faults.after("payment_method")
        return details

    async def aclose(self) -> None:
        return None

    def intents_for(self, purchase_id: str) -> list[dict[str, Any]]:
        """Return copies of the purchase's intents, with effect counters.

        ``captures`` and ``refunds`` count how often a capture or refund
        took effect, so tests can check that none happened twice.
        """
        return [
            dict(self._load(intent["id"]))
            for intent in list(self._intents.values())
            if intent["purchase_id"] == purchase_id
        ]

    async def _call(
        self,
        operation: str,
        idempotency_key: str,
        params: list[Any],
        action: Callable[[], dict[str, Any]],
    ) -> dict[str, Any]:
        with self._shared_state():
            stored = self._results.get(idempotency_key)
        if stored is not None:
            return _replay(stored, operation, params, idempotency_key)
        await self.faults.before(operation)
        with self._shared_state():
            result = self._run_once(operation, idempotency_key, params, action)
        await self.faults.after(operation)
        return result

    def _run_once(
        self,
        operation: str,
        idempotency_key: str,
        params: list[Any],
        action: Callable[[], dict[str, Any]],
    ) -> dict[str, Any]:
        # Another process may have run the same key since the first look.
        stored = self._results.get(idempotency_key)
        if stored is not None:
            return _replay(stored, operation, params, idempotency_key)
        try:
            result = dict(action())
        except PaymentDeclined as exc:
            self._results[idempotency_key] = {
                "operation": operation,
                "params": params,
                "declined": [exc.decline_code, str(exc)],
            }
            self._save()
            raise
        self._results[idempotency_key] = {
            "operation": operation,
            "params": params,
            "result": result,
        }
        self._save()
        return result

    def _load(self, intent_id: str) -> dict[str, Any]:
        intent = self._intents.get(intent_id)
        if intent is None:
            raise PaymentStateError(f"no such payment intent: {intent_id!r}")
        expires = intent["capture_before"]
        if intent["status"] == REQUIRES_CAPTURE and self._clock() >= expires:
            intent["status"] = CANCELED
            intent["cancellation_reason"] = "automatic"
            self._save()
        return intent

    def _find_authentication(self, authentication_id: str) -> dict[str, Any]:
        for intent in self._intents.values():
            if intent.get("authentication_id") == authentication_id:
                return self._load(intent["id"])
        raise AuthenticationNotFound(
            f"no payment intent waits for authentication {authentication_id[:80]!r}"
        )

    def _expect(self, intent_id: str, *statuses: str) -> dict[str, Any]:
        intent = self._load(intent_id)
        if intent["status"] not in statuses:
            raise PaymentStateError(
                f"payment intent {intent_id} is {intent['status']}, "
                f"expected {' or '.join(statuses)}",
                intent["status"],
            )
        return intent

    def _save(self) -> None:
        if self._state_path is None:
            return
        temporary = self._state_path.with_suffix(".tmp")
        temporary.write_text(
            json.dumps({"intents": self._intents, "results": self._results})
        )
        os.replace(temporary, self._state_path)


def _replay(
    stored: dict[str, Any], operation: str, params: list[Any], key: str
) -> dict[str, Any]:
    if stored["operation"] != operation or stored["params"] != params:
        raise PaymentProviderError(
            f"idempotency key {key!r} was used for another request"
        )
    if "declined" in stored:
        decline_code, message = stored["declined"]
        raise PaymentDeclined(decline_code, message)
    return dict(stored["result"])


def _intent(data: dict[str, Any]) -> PaymentIntent:
    return PaymentIntent(
        id=data["id"],
        status=data["status"],
        amount=data["amount"],
        currency=data["currency"],
        amount_received=data["amount_received"],
        amount_refunded=data["amount_refunded"],
        capture_before=data["capture_before"],
        cancellation_reason=data["cancellation_reason"],
        decline_code=data["decline_code"],
        next_action_url=data.get("next_action_url"),
    )
