"""Signs and verifies webhooks with the providers' official Python libraries,
as an independent oracle for tests/verify_oracles.rs.

  oracle.py sign LIB SECRET BODY_FILE UNIX_TS ID      -> JSON object of headers
  oracle.py verify LIB SECRET BODY_FILE HEADERS_JSON  -> "valid", or "invalid: why" (exit 1)

  oracle.py twilio-sign TOKEN BODY_FILE URL          -> {"url": URL with bodySHA256, "X-Twilio-Signature": ...}
  oracle.py twilio-verify TOKEN BODY_FILE URL SIG    -> "valid", or "invalid: why" (exit 1)

LIB: stripe | standardwebhooks | svix | slack. Verification uses each
library's own clock and default tolerance. Twilio signs the URL, and for a
JSON body puts the body's SHA-256 in it (twilio-python's RequestValidator).
"""
import datetime
import json
import sys


def sign(lib, secret, body, ts, msg_id):
    if lib == "stripe":
        import stripe

        header = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=ts)
        return {"Stripe-Signature": header}
    if lib in ("standardwebhooks", "svix"):
        if lib == "svix":
            from svix.webhooks import Webhook
            prefix = "svix"
        else:
            from standardwebhooks.webhooks import Webhook
            prefix = "webhook"
        when = datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)
        sig = Webhook(secret).sign(msg_id, when, body)
        return {f"{prefix}-id": msg_id, f"{prefix}-timestamp": str(ts), f"{prefix}-signature": sig}
    if lib == "slack":
        from slack_sdk.signature import SignatureVerifier

        sig = SignatureVerifier(secret).generate_signature(timestamp=str(ts), body=body)
        return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": sig}
    raise SystemExit(f"unknown lib {lib}")


def verify(lib, secret, body, headers):
    lower = {k.lower(): v for k, v in headers.items()}
    if lib == "stripe":
        import stripe

        stripe.WebhookSignature.verify_header(body, lower.get("stripe-signature"), secret, tolerance=300)
        return
    if lib in ("standardwebhooks", "svix"):
        if lib == "svix":
            from svix.webhooks import Webhook
        else:
            from standardwebhooks.webhooks import Webhook
        Webhook(secret).verify(body, lower)
        return
    if lib == "slack":
        from slack_sdk.signature import SignatureVerifier

        ok = SignatureVerifier(secret).is_valid(
            body, lower.get("x-slack-request-timestamp"), lower.get("x-slack-signature")
        )
        if not ok:
            raise ValueError("slack-sdk SignatureVerifier.is_valid returned False")
        return
    raise SystemExit(f"unknown lib {lib}")


def twilio(cmd, token, body, url, sig=None):
    from urllib.parse import urlencode

    from twilio.request_validator import RequestValidator

    validator = RequestValidator(token)
    if cmd == "twilio-sign":
        sep = "&" if "?" in url else "?"
        signed_url = url + sep + urlencode({"bodySHA256": validator.compute_hash(body)})
        print(json.dumps({"url": signed_url, "X-Twilio-Signature": validator.compute_signature(signed_url, {})}))
        return
    if not validator.validate(url, body, sig):
        print("invalid: twilio RequestValidator.validate returned False")
        sys.exit(1)
    print("valid")


def main():
    if sys.argv[1].startswith("twilio-"):
        cmd, token, body_file, url = sys.argv[1:5]
        with open(body_file, encoding="utf-8") as f:
            twilio(cmd, token, f.read(), url, *sys.argv[5:6])
        return
    cmd, lib, secret, body_file = sys.argv[1:5]
    with open(body_file, encoding="utf-8") as f:
        body = f.read()
    if cmd == "sign":
        print(json.dumps(sign(lib, secret, body, int(sys.argv[5]), sys.argv[6])))
    elif cmd == "verify":
        try:
            verify(lib, secret, body, json.loads(sys.argv[5]))
        except Exception as e:  # every library has its own error type
            print(f"invalid: {type(e).__name__}: {e}")
            sys.exit(1)
        print("valid")
    else:
        raise SystemExit(f"unknown command {cmd}")


main()
