"""Signs a webhook request the way the vendor's own Python SDK does, for the tests.

Usage: python sign.py SCHEME SECRET TIMESTAMP [EXTRA] < body  ->  JSON object of headers
  standard-webhooks  standardwebhooks.Webhook.sign       (EXTRA: the webhook-id)
  svix               svix.webhooks.Webhook.sign          (EXTRA: the svix-id)
  slack              slack_sdk SignatureVerifier.generate_signature
  twilio-form        twilio RequestValidator.compute_signature over the form fields
                     (EXTRA: the public URL Twilio calls)
  twilio-sha256      the same with algorithm HMAC_SHA256 (and its settings header)
  twilio-json        the same over the URL with ?bodySHA256= (EXTRA: the URL without it);
                     prints {"headers": ..., "url": ...}
"""
import json
import sys
from datetime import datetime, timezone
from urllib.parse import parse_qsl

scheme, secret, timestamp = sys.argv[1:4]
extra = sys.argv[4] if len(sys.argv) > 4 else ""
body = sys.stdin.buffer.read().decode("utf-8")
ts = int(timestamp)
out = {}

if scheme == "standard-webhooks":
    from standardwebhooks.webhooks import Webhook

    signature = Webhook(secret).sign(extra, datetime.fromtimestamp(ts, tz=timezone.utc), body)
    out = {"webhook-id": extra, "webhook-timestamp": str(ts), "webhook-signature": signature}
elif scheme == "svix":
    from svix.webhooks import Webhook

    signature = Webhook(secret).sign(extra, datetime.fromtimestamp(ts, tz=timezone.utc), body)
    out = {"svix-id": extra, "svix-timestamp": str(ts), "svix-signature": signature}
elif scheme == "slack":
    from slack_sdk.signature import SignatureVerifier

    signature = SignatureVerifier(secret).generate_signature(timestamp=str(ts), body=body)
    out = {"X-Slack-Signature": signature, "X-Slack-Request-Timestamp": str(ts)}
elif scheme in ("twilio-form", "twilio-sha256"):
    from twilio.request_validator import RequestValidator

    class Fields(dict):
        """Repeated form fields, as the validator reads them (getlist)."""

        def getlist(self, name):
            return self[name]

    fields = Fields()
    for name, value in parse_qsl(body, keep_blank_values=True):
        fields.setdefault(name, []).append(value)
    if scheme == "twilio-form":
        out = {"X-Twilio-Signature": RequestValidator(secret).compute_signature(extra, fields)}
    else:
        signature = RequestValidator(secret).compute_signature(extra, fields, algorithm="HMAC_SHA256")
        out = {
            "X-Twilio-Signature": signature,
            "X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_test,algorithm=HMAC_SHA256",
        }
elif scheme == "twilio-json":
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(secret)
    url = f"{extra}?bodySHA256={validator.compute_hash(body)}"
    out = {"headers": {"X-Twilio-Signature": validator.compute_signature(url, {})}, "url": url}
else:
    sys.exit(f"unknown scheme {scheme}")
print(json.dumps(out))
