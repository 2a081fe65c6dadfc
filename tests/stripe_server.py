"""A small Stripe-speaking HTTP server for the tests (Stripe itself is unreachable from here).

It speaks what ``bitnet_actor.services.billing.stripe`` uses, as Stripe does: form-encoded bodies with
bracketed keys (``payload[value]``, ``items[0][price]``), bearer-key authentication, Stripe's error JSON
(``{"error": {"type", "message", "code", "param"}}``), customers, prices, subscriptions and
``/v1/billing/meter_events`` (an ``identifier`` is accepted once within 24 hours: a second one is refused
with ``duplicate_meter_event``), Checkout Sessions (``/v1/checkout/sessions``: the real API's parameters
and object, with its checks: an existing customer, ``mode``, ``success_url``, line items of existing prices
with a ``quantity`` for licensed prices and none for metered ones; ``complete_checkout`` plays the customer
paying: the subscription is made and the session completed) and Billing Portal sessions
(``/v1/billing_portal/sessions``: an existing customer, an optional ``return_url``), and ``Idempotency-Key``
replay (the first response again, ``Idempotent-Replayed: true``; the same key with other parameters: 400
``idempotency_error``). ``down("refuse")`` closes the listening socket (connection refused) and
``down("503")`` answers every request with a 503 until ``up()``;
``lose_responses`` drops the answers of requests it carried out (the caller sees a broken connection).

``sign(payload)`` makes a ``Stripe-Signature`` header exactly as Stripe does (``t=<unix>,v1=<hex HMAC-SHA256
of "t.payload">``) and ``event(...)`` a webhook event body. Driven only through the ``stripe`` package.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["StripeServer"]

_DAY_S = 24 * 3600
_KEY = re.compile(r"^([^\[]+)((?:\[[^\]]*\])*)$")


def decode_form(body: str) -> dict[str, Any]:
    """Stripe's form encoding: ``a[b][0][c]=v`` -> ``{"a": {"b": [{"c": "v"}]}}``."""
    out: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        match = _KEY.match(key)
        if not match:
            out[key] = value
            continue
        parts = [match.group(1), *re.findall(r"\[([^\]]*)\]", match.group(2))]
        node: Any = out
        for part, nxt in itertools.pairwise(parts):
            container: Any = [] if nxt.isdigit() or nxt == "" else {}
            if isinstance(node, list):
                index = int(part)
                while len(node) <= index:
                    node.append(None)
                if node[index] is None:
                    node[index] = container
                node = node[index]
            else:
                node = node.setdefault(part, container)
        last = parts[-1]
        if isinstance(node, list):
            if last == "":
                node.append(value)
            else:
                index = int(last)
                while len(node) <= index:
                    node.append(None)
                node[index] = value
        else:
            node[last] = value
    return out


class _Refused(Exception):
    def __init__(self, status: int, type_: str, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": type_, "message": message, "code": code, "param": param}}


@dataclass
class StripeServer:
    """The server, its state, and switches for the tests. Use as a context manager (or start/stop)."""

    api_key: str = "sk_test_local"
    webhook_secret: str = "whsec_local_secret"
    clock: Any = time.time
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkout_sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    portal_sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    meter_events: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, Any], str | None]] = field(default_factory=list)
    refused: int = 0
    meter_delay_s: float = 0.0  # each meter event takes this long (racing senders overlap)
    lose_responses: int = 0  # the next N requests are processed, then their connection drops unanswered
    checkout_host: str = "checkout.stripe.com"  # another: an account whose Checkout has a custom domain

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._identifiers: dict[str, float] = {}
        self._idempotency: dict[str, tuple[float, str, str, dict[str, Any], int, dict[str, Any]]] = {}
        self._mode: str | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # Lifecycle -------------------------------------------------------------------------------------------

    def __enter__(self) -> StripeServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  # quiet
                return

            def do_GET(self) -> None:
                server._handle(self, "GET")

            def do_POST(self) -> None:
                server._handle(self, "POST")

            def do_DELETE(self) -> None:
                server._handle(self, "DELETE")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def down(self, mode: str = "refuse") -> None:
        """``refuse``: nothing listens on the port; ``503``: every request is answered 503 (api_error)."""
        if mode == "refuse":
            self.stop()
        self._mode = mode

    def up(self) -> None:
        if self._mode == "refuse":
            self.start()
        self._mode = None

    # Webhooks --------------------------------------------------------------------------------------------

    def sign(self, payload: bytes, *, timestamp: int | None = None, secret: str | None = None) -> str:
        """A ``Stripe-Signature`` header for ``payload``, as Stripe computes it."""
        t = int(self.clock()) if timestamp is None else timestamp
        signed = f"{t}.".encode() + payload
        mac = hmac.new((secret or self.webhook_secret).encode(), signed, hashlib.sha256).hexdigest()
        return f"t={t},v1={mac}"

    def event(self, type_: str, obj: dict[str, Any], *, created: int | None = None) -> bytes:
        """A webhook event body (JSON bytes) about ``obj``."""
        body = {
            "id": f"evt_{secrets.token_hex(12)}",
            "object": "event",
            "api_version": "2025-04-30.basil",
            "created": int(self.clock()) if created is None else created,
            "type": type_,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "data": {"object": obj},
        }
        return json.dumps(body).encode()

    # Reading the state -----------------------------------------------------------------------------------

    def meter_total(self, event_name: str, customer: str | None = None) -> int:
        with self._lock:
            return sum(
                int(e["payload"]["value"])
                for e in self.meter_events
                if e["event_name"] == event_name
                and (customer is None or e["payload"]["stripe_customer_id"] == customer)
            )

    def create_price(self, *, unit_amount: int = 2000, metered: bool = False) -> str:
        price_id = f"price_{secrets.token_hex(8)}"
        with self._lock:
            self.prices[price_id] = self._price(price_id, unit_amount, metered)
        return price_id

    def complete_checkout(self, session_id: str) -> dict[str, Any]:
        """The customer pays at Checkout: the session's subscription is created (active) and the session marked
        complete, as Stripe does; returns the subscription (for the ``customer.subscription.created`` event)."""
        with self._lock:
            session = self.checkout_sessions[session_id]
            assert session["status"] == "open", session["status"]
            sub_id = f"sub_{secrets.token_hex(8)}"
            items = [{"price": item["price"]} for item in session.pop("_line_items")]
            sub = {
                "id": sub_id,
                "object": "subscription",
                "customer": session["customer"],
                "status": "active",
                "created": int(self.clock()),
                "metadata": dict((session.get("_subscription_data") or {}).get("metadata") or {}),
                "items": {"object": "list", "data": [self._item(i) for i in items]},
            }
            self.subscriptions[sub_id] = sub
            session.update(status="complete", payment_status="paid", subscription=sub_id)
            return sub

    # The API ---------------------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        if self._mode == "refuse":  # a kept-alive connection opened before the switch: dropped unanswered
            handler.close_connection = True
            return
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length).decode() if length else ""
        path, _, query = handler.path.partition("?")
        params = decode_form(raw if method == "POST" else query)
        idem = handler.headers.get("Idempotency-Key")
        extra: dict[str, str] = {}
        if self.meter_delay_s and path == "/v1/billing/meter_events":
            time.sleep(self.meter_delay_s)
        try:
            if self._mode == "503":
                raise _Refused(503, "api_error", "Stripe is having a bad day (test switch)")
            if handler.headers.get("Authorization") != f"Bearer {self.api_key}":
                raise _Refused(401, "invalid_request_error", "Invalid API Key provided")
            with self._lock:
                self.requests.append((method, path, params, idem))
                now = self.clock()
                self._idempotency = {k: v for k, v in self._idempotency.items() if now - v[0] < _DAY_S}
                replay = self._idempotency.get(idem) if idem and method == "POST" else None
                if replay is not None:
                    _, r_method, r_path, r_params, status, body = replay
                    if (r_method, r_path, r_params) != (method, path, params):
                        raise _Refused(
                            400,
                            "idempotency_error",
                            f"Keys for idempotent requests can only be used with the same parameters they were first"
                            f" used with. Try using a key other than '{idem}' if you meant to execute a different"
                            " request.",
                        )
                    extra["Idempotent-Replayed"] = "true"
                else:
                    try:
                        status, body = 200, self._route(method, path, params, now)
                    except _Refused as exc:
                        if idem and method == "POST" and exc.status < 500:  # Stripe stores 4xx results too
                            self._idempotency[idem] = (now, method, path, params, exc.status, exc.body)
                        raise
                    if idem and method == "POST":
                        self._idempotency[idem] = (now, method, path, params, status, body)
        except _Refused as exc:
            status, body = exc.status, exc.body
            self.refused += 1
        with self._lock:
            lose = self.lose_responses > 0
            self.lose_responses -= lose
        if lose:  # done, but the caller never hears of it (a timeout, a reset connection)
            handler.close_connection = True
            return
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Request-Id", f"req_{secrets.token_hex(7)}")
        for name, value in extra.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _route(self, method: str, path: str, params: dict[str, Any], now: float) -> dict[str, Any]:
        parts = path.strip("/").split("/")
        if parts[:1] != ["v1"]:
            raise _Refused(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path})")
        rest = parts[1:]
        if rest == ["customers"] and method == "POST":
            cus_id = f"cus_{secrets.token_hex(7)}"
            customer = {
                "id": cus_id,
                "object": "customer",
                "created": int(now),
                "email": params.get("email"),
                "name": params.get("name"),
                "metadata": params.get("metadata") or {},
                "livemode": False,
            }
            self.customers[cus_id] = customer
            return customer
        if len(rest) == 2 and rest[0] == "customers" and method == "GET":
            return self._get(self.customers, rest[1], "customer")
        if rest == ["prices"] and method == "POST":
            price_id = f"price_{secrets.token_hex(8)}"
            price = self._price(price_id, int(params.get("unit_amount") or 0), "recurring" in params)
            self.prices[price_id] = price
            return price
        if len(rest) == 2 and rest[0] == "prices" and method == "GET":
            return self._get(self.prices, rest[1], "price")
        if rest == ["subscriptions"] and method == "POST":
            customer = params.get("customer")
            if customer not in self.customers:
                raise _Refused(404, "invalid_request_error", f"No such customer: '{customer}'", "resource_missing")
            items = params.get("items") or []
            if not items:
                raise _Refused(400, "invalid_request_error", "Missing required param: items.", "parameter_missing")
            sub_id = f"sub_{secrets.token_hex(8)}"
            sub = {
                "id": sub_id,
                "object": "subscription",
                "customer": customer,
                "status": "active",
                "created": int(now),
                "metadata": params.get("metadata") or {},
                "items": {"object": "list", "data": [self._item(i) for i in items]},
            }
            self.subscriptions[sub_id] = sub
            return sub
        if len(rest) == 2 and rest[0] == "subscriptions":
            sub = self._get(self.subscriptions, rest[1], "subscription")
            if method == "GET":
                return sub
            if method == "DELETE":
                sub["status"] = "canceled"
                return sub
            if method == "POST" and params.get("items"):
                sub["items"] = {"object": "list", "data": [self._item(i) for i in params["items"]]}
            return sub
        if rest == ["billing", "meter_events"] and method == "POST":
            return self._meter_event(params, now)
        if rest == ["checkout", "sessions"] and method == "POST":
            return self._checkout_session(params, now)
        if len(rest) == 3 and rest[:2] == ["checkout", "sessions"] and method == "GET":
            found = self._get(self.checkout_sessions, rest[2], "checkout.session")
            return {k: v for k, v in found.items() if not k.startswith("_")}
        if rest == ["billing_portal", "sessions"] and method == "POST":
            return self._portal_session(params, now)
        raise _Refused(404, "invalid_request_error", f"Unrecognized request URL ({method}: {path})")

    def _meter_event(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        name = params.get("event_name")
        payload = params.get("payload") or {}
        if not name:
            raise _Refused(400, "invalid_request_error", "Missing required param: event_name.", "parameter_missing")
        customer = payload.get("stripe_customer_id")
        if customer not in self.customers:
            raise _Refused(
                400, "invalid_request_error", f"No such customer: '{customer}'", "resource_missing", "payload"
            )
        try:
            value = int(payload.get("value", ""))
        except ValueError:
            raise _Refused(
                400, "invalid_request_error", "payload[value] must be a whole number", None, "payload"
            ) from None
        timestamp = int(params.get("timestamp") or now)
        if not now - 35 * _DAY_S <= timestamp <= now + 300:
            raise _Refused(
                400,
                "invalid_request_error",
                "Timestamp must be within the past 35 calendar days or up to 5 minutes in the future.",
                "timestamp_out_of_range",
                "timestamp",
            )
        identifier = params.get("identifier") or secrets.token_hex(12)
        self._identifiers = {k: t for k, t in self._identifiers.items() if now - t < _DAY_S}
        if identifier in self._identifiers:
            raise _Refused(
                400,
                "invalid_request_error",
                f"An event with identifier {identifier} already exists.",
                "duplicate_meter_event",
                "identifier",
            )
        self._identifiers[identifier] = now
        event = {
            "object": "billing.meter_event",
            "created": int(now),
            "event_name": name,
            "identifier": identifier,
            "livemode": False,
            "payload": {"stripe_customer_id": customer, "value": str(value)},
            "timestamp": timestamp,
        }
        self.meter_events.append(event)
        return event

    def _customer_param(self, params: dict[str, Any]) -> str:
        customer = params.get("customer")
        if not customer:
            raise _Refused(400, "invalid_request_error", "Missing required param: customer.", "parameter_missing",
                           "customer")  # fmt: skip
        if customer not in self.customers:
            raise _Refused(
                400, "invalid_request_error", f"No such customer: '{customer}'", "resource_missing", "customer"
            )
        return str(customer)

    def _checkout_session(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        customer = self._customer_param(params)
        mode = params.get("mode")
        if mode not in ("payment", "setup", "subscription"):
            raise _Refused(400, "invalid_request_error", "Missing required param: mode.", "parameter_missing", "mode")
        if not params.get("success_url"):
            raise _Refused(400, "invalid_request_error", "Missing required param: success_url.", "parameter_missing",
                           "success_url")  # fmt: skip
        items = params.get("line_items") or []
        if mode == "subscription" and not items:
            raise _Refused(400, "invalid_request_error", "Missing required param: line_items.", "parameter_missing",
                           "line_items")  # fmt: skip
        for i, item in enumerate(items):
            price = self.prices.get(item.get("price"))
            if price is None:
                raise _Refused(400, "invalid_request_error", f"No such price: '{item.get('price')}'",
                               "resource_missing", f"line_items[{i}][price]")  # fmt: skip
            metered = price["recurring"]["usage_type"] == "metered"
            if metered and "quantity" in item:
                raise _Refused(400, "invalid_request_error", "Quantity should not be specified where usage_type is"
                               f" `metered`. Remove quantity from `line_items[{i}]`", None,
                               f"line_items[{i}][quantity]")  # fmt: skip
            if not metered and "quantity" not in item:
                raise _Refused(400, "invalid_request_error", f"Quantity is required. Add `quantity` to"
                               f" `line_items[{i}]`", "parameter_missing", f"line_items[{i}][quantity]")  # fmt: skip
        session_id = f"cs_test_{secrets.token_hex(16)}"
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": mode,
            "status": "open",
            "payment_status": "unpaid",
            "customer": customer,
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata") or {},
            "success_url": params["success_url"],
            "cancel_url": params.get("cancel_url"),
            "subscription": None,
            "created": int(now),
            "expires_at": int(now) + _DAY_S,
            "livemode": False,
            "url": f"https://{self.checkout_host}/c/pay/{session_id}",
            "_line_items": items,
            "_subscription_data": params.get("subscription_data") or {},
        }
        self.checkout_sessions[session_id] = session
        return {k: v for k, v in session.items() if not k.startswith("_")}

    def _portal_session(self, params: dict[str, Any], now: float) -> dict[str, Any]:
        customer = self._customer_param(params)
        session_id = f"bps_{secrets.token_hex(12)}"
        session = {
            "id": session_id,
            "object": "billing_portal.session",
            "configuration": "bpc_local_default",
            "customer": customer,
            "return_url": params.get("return_url"),
            "created": int(now),
            "livemode": False,
            "locale": None,
            "on_behalf_of": None,
            "flow": None,
            "url": f"https://billing.stripe.com/p/session/test_{secrets.token_hex(16)}",
        }
        self.portal_sessions[session_id] = session
        return session

    def _get(self, table: dict[str, dict[str, Any]], key: str, kind: str) -> dict[str, Any]:
        if key not in table:
            raise _Refused(404, "invalid_request_error", f"No such {kind}: '{key}'", "resource_missing", "id")
        return table[key]

    def _price(self, price_id: str, unit_amount: int, metered: bool) -> dict[str, Any]:
        return {
            "id": price_id,
            "object": "price",
            "active": True,
            "currency": "usd",
            "unit_amount": unit_amount,
            "type": "recurring",
            "recurring": {"interval": "month", "usage_type": "metered" if metered else "licensed"},
        }

    def _item(self, item: dict[str, Any]) -> dict[str, Any]:
        price_id = item.get("price")
        if price_id not in self.prices:
            raise _Refused(404, "invalid_request_error", f"No such price: '{price_id}'", "resource_missing")
        return {"id": f"si_{secrets.token_hex(7)}", "object": "subscription_item", "price": self.prices[price_id]}
