# crm_receiver.py: a CRM endpoint that checks both signatures (Python 3 stdlib only)
import base64, hashlib, hmac, json, os, time
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRET = os.environ["WEBHOOK_SECRET"]          # the account's whsec_... secret
TOLERANCE = 5 * 60                             # reject deliveries older than 5 minutes

def verify(headers, body: bytes) -> bool:
    # X-Hub-Signature-256: HMAC-SHA256 of the raw body, keyed with the whole secret string.
    hub = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(hub, headers.get("X-Hub-Signature-256", "")):
        return False
    # Standard Webhooks: HMAC-SHA256 of "<id>.<timestamp>.<body>", keyed with the
    # base64-decoded part after "whsec_"; the timestamp protects against replays.
    msg_id, ts = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "0")
    if abs(time.time() - int(ts)) > TOLERANCE:
        return False
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    return any(hmac.compare_digest(expected, s) for s in headers.get("webhook-signature", "").split())

seen = set()                                   # use your database in production

class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if not verify(self.headers, body):
            self.send_response(401); self.end_headers(); return
        if self.headers["webhook-id"] not in seen:   # a repeat has the same webhook-id
            seen.add(self.headers["webhook-id"])
            print(json.dumps(json.loads(body), indent=2), flush=True)
        self.send_response(204); self.end_headers()

HTTPServer(("127.0.0.1", int(os.environ.get("PORT", "9000"))), Hook).serve_forever()
