"""A local webhook app that verifies signatures with the providers' official
libraries, for tests/fixture_oracles.rs: `whtunnel send`, `test` and
`trigger` must produce requests it accepts.

  verify_app.py STRIPE_SECRET STANDARD_SECRET FINAEGIS_SECRET

Prints "port N" once listening on 127.0.0.1 (port 0: the OS picks), then
answers POST /webhooks/stripe (stripe.Webhook.construct_event),
/webhooks/standard (standardwebhooks Webhook.verify) and /webhooks/finaegis
(HMAC-SHA256 hex of the body in X-Webhook-Signature, compared as FinAegis's
PHP SDK's verifySignature does) with 200 {"received": true, "type": ...} or
400 and the library's reason.
"""
import hashlib
import hmac
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import stripe
from standardwebhooks.webhooks import Webhook

STRIPE_SECRET, STANDARD_SECRET, FINAEGIS_SECRET = sys.argv[1:4]


def verify(path, headers, body):
    """The event type, or raises with the reason."""
    if path.startswith("/webhooks/stripe"):
        event = stripe.Webhook.construct_event(body.decode("utf-8"), headers.get("stripe-signature"), STRIPE_SECRET)
        return event["type"]
    if path.startswith("/webhooks/standard"):
        payload = Webhook(STANDARD_SECRET).verify(body, headers)
        return payload["type"]
    if path.startswith("/webhooks/finaegis"):
        want = hmac.new(FINAEGIS_SECRET.encode(), body, hashlib.sha256).hexdigest()
        got = headers.get("x-webhook-signature", "")
        if not hmac.compare_digest(want, got):
            raise ValueError("X-Webhook-Signature does not match")
        return json.loads(body)["event"]
    raise ValueError(f"no webhook at {path}")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            kind = verify(self.path, headers, body)
            status, answer = 200, {"received": True, "type": kind}
        except Exception as e:  # every library has its own error type
            status, answer = 400, {"error": f"{type(e).__name__}: {e}"}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
