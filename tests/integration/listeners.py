"""Where failure notifications arrive in the tests: a webhook and an SMTP server, both real, on 127.0.0.1."""

from __future__ import annotations

import email
import json
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer

RECIPIENT = "data-engineering@example.org"


@dataclass
class Inbox:
    webhook_port: int
    smtp_port: int
    posts: list[dict] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)  # headers and decoded text of each message

    def env(self) -> dict[str, str]:
        """The settings that send a failed task's notification here (pophealth/operate/notify.py)."""
        return {
            "POPHEALTH_NOTIFY_WEBHOOK": f"http://127.0.0.1:{self.webhook_port}/pophealth",
            "POPHEALTH_NOTIFY_EMAIL": RECIPIENT,
            "AIRFLOW__SMTP__SMTP_HOST": "127.0.0.1",
            "AIRFLOW__SMTP__SMTP_PORT": str(self.smtp_port),
            "AIRFLOW__SMTP__SMTP_STARTTLS": "False",
            "AIRFLOW__SMTP__SMTP_SSL": "False",
            "AIRFLOW__SMTP__SMTP_MAIL_FROM": "pophealth@example.org",
            "AIRFLOW__SMTP__SMTP_RETRY_LIMIT": "0",
            "AIRFLOW__SMTP__SMTP_TIMEOUT": "10",
        }

    def wait(self, seconds: float = 30) -> None:
        """Until both a post and an email came, or `seconds` passed."""
        deadline = time.monotonic() + seconds
        while not (self.posts and self.emails) and time.monotonic() < deadline:
            time.sleep(0.5)


def _readable(raw: str) -> str:
    message = email.message_from_string(raw)
    parts = [
        p.get_payload(decode=True).decode(errors="replace")
        for p in message.walk()
        if p.get_content_maintype() == "text"
    ]
    return "\n".join([f"{k}: {v}" for k, v in message.items()] + parts)


@contextmanager
def listening() -> Iterator[Inbox]:
    inbox = Inbox(0, 0)

    class Webhook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            inbox.posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    class Smtp(socketserver.StreamRequestHandler):
        """Just enough SMTP to take a message (smtplib's EHLO, MAIL, RCPT, DATA, QUIT)."""

        timeout = 30

        def handle(self):
            self.wfile.write(b"220 localhost test SMTP\r\n")
            while line := self.rfile.readline():
                verb = line[:4].upper()
                if verb == b"DATA":
                    self.wfile.write(b"354 go ahead\r\n")
                    body = []
                    while (part := self.rfile.readline()) not in (b".\r\n", b""):
                        body.append(part)
                    inbox.emails.append(_readable(b"".join(body).decode(errors="replace")))
                    self.wfile.write(b"250 queued\r\n")
                elif verb == b"QUIT":
                    self.wfile.write(b"221 bye\r\n")
                    return
                else:
                    self.wfile.write(b"250 ok\r\n")

    servers = [HTTPServer(("127.0.0.1", 0), Webhook), socketserver.TCPServer(("127.0.0.1", 0), Smtp)]
    inbox.webhook_port, inbox.smtp_port = servers[0].server_port, servers[1].server_address[1]
    for server in servers:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    try:
        yield inbox
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
