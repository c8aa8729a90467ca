#!/usr/bin/env python3
"""A TLS-terminating reverse proxy with a password, in front of the stack's search server.

scripts/stack up --secured runs two of these (127.0.0.1:9201 and :9202) in front of the plain
OpenSearch, so the tests see a search cluster that speaks HTTPS only and wants credentials, as a
secured Elasticsearch does:

    https-proxy.py --listen PORT --upstream http://127.0.0.1:9200 --cert server.pem \
        --key server.key --user wxstream --password-file es-password --api-key-file es-api-key

A request passes when its Authorization is `Basic base64(USER:PASSWORD)` or `ApiKey <the
contents of the api key file>`; anything else is answered 401 with
`WWW-Authenticate: Basic realm="wxstream"`. A passing request's method, path and query, headers
(minus hop-by-hop ones and Authorization) and body go to the upstream unchanged (a gzip body
keeps its Content-Encoding); its status, headers and body come back. HTTP/1.1 keep-alive;
Content-Length or chunked request bodies; one thread and one upstream connection per client
connection. Standard library only.
"""

import argparse
import base64
import hmac
import http.client
import http.server
import json
import ssl
import sys
import urllib.parse

# RFC 9110 7.6.1's hop-by-hop headers, plus those the proxy sets itself.
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
}
MAX_BODY = 1 << 30  # a bulk request is a few MB; refuse absurd sizes instead of buffering them


def read_secret(path):
    with open(path, "rb") as f:
        return f.read().decode().strip()


class BadRequest(Exception):
    pass


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "wxstream-https-proxy"
    timeout = 300  # an idle keep-alive connection (or a stuck client) is closed after this

    # --- connection set-up: the TLS handshake happens here, in the connection's own thread,
    # so a slow or plain-text client cannot hold up the accept loop.
    def setup(self):
        self.upstream = None
        self.request.settimeout(self.timeout)
        self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def finish(self):
        try:
            super().finish()
        finally:
            if self.upstream is not None:
                self.upstream.close()
            self.request.close()  # the TLS socket (the server closes only the raw one)

    def log_message(self, format, *args):  # no access log: the tests send many requests
        pass

    def log_error(self, format, *args):
        sys.stderr.write("%s: %s\n" % (self.address_string(), format % args))

    # --- the request
    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise BadRequest("connection closed inside a chunked body")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise BadRequest("bad chunk size")
                if size == 0:
                    # Trailers (ignored) up to the empty line.
                    while True:
                        line = self.rfile.readline(65537)
                        if line in (b"\r\n", b"\n", b""):
                            break
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise BadRequest("body too large")
                data = self.rfile.read(size)
                if len(data) != size:
                    raise BadRequest("connection closed inside a chunk")
                chunks.append(data)
                self.rfile.readline(3)  # the CRLF after the chunk
        length = self.headers.get("Content-Length")
        if length is None:
            return None
        try:
            n = int(length)
        except ValueError:
            raise BadRequest("bad Content-Length")
        if n < 0 or n > MAX_BODY:
            raise BadRequest("bad Content-Length")
        data = self.rfile.read(n)
        if len(data) != n:
            raise BadRequest("connection closed inside the body")
        return data

    def authorized(self):
        auth = self.headers.get("Authorization", "")
        scheme, _, credentials = auth.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "basic":
            try:
                given = base64.b64decode(credentials, validate=True)
            except ValueError:
                return False
            return hmac.compare_digest(given, self.server.basic)
        if scheme.lower() == "apikey":
            return hmac.compare_digest(credentials.encode(), self.server.api_key)
        return False

    def reply(self, status, body, extra=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        for name, value in extra:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def upstream_headers(self, body):
        named = {h.strip().lower() for h in self.headers.get("Connection", "").split(",")}
        headers = []
        for name, value in self.headers.items():
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in named or lower in (
                    "authorization", "content-length", "expect"):
                continue
            headers.append((name, value))
        if body is not None:
            headers.append(("Content-Length", str(len(body))))
        return headers

    def forward(self, body):
        headers = self.upstream_headers(body)
        for attempt in (1, 2):
            fresh = self.upstream is None
            if fresh:
                self.upstream = http.client.HTTPConnection(
                    self.server.up_host, self.server.up_port, timeout=self.server.up_timeout)
            try:
                self.upstream.putrequest(self.command, self.path, skip_host=True,
                                         skip_accept_encoding=True)
                for name, value in headers:
                    self.upstream.putheader(name, value)
                self.upstream.endheaders(body)
                response = self.upstream.getresponse()
                data = response.read()
                return response, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    http.client.CannotSendRequest, http.client.ResponseNotReady):
                # A kept-alive upstream connection the server closed meanwhile: once more on a
                # new one. A fresh connection that fails is a real failure.
                self.upstream.close()
                self.upstream = None
                if fresh or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def handle_any(self):
        try:
            body = self.read_body()
        except BadRequest as e:
            self.close_connection = True
            self.reply(400, {"error": {"type": "bad_request", "reason": str(e)}, "status": 400})
            return
        if not self.authorized():
            self.reply(401, {
                "error": {"type": "security_exception",
                          "reason": "missing or wrong authentication credentials"},
                "status": 401,
            }, extra=[("WWW-Authenticate", 'Basic realm="wxstream"')])
            return
        try:
            response, data = self.forward(body)
        except (OSError, http.client.HTTPException) as e:
            if self.upstream is not None:
                self.upstream.close()
                self.upstream = None
            self.reply(502, {"error": {"type": "bad_gateway", "reason": f"upstream: {e!r}"},
                             "status": 502})
            return
        named = {h.strip().lower() for h in (response.getheader("Connection") or "").split(",")}
        if response.will_close:
            self.upstream.close()
            self.upstream = None
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in named:
                continue
            # HEAD's Content-Length describes the body GET would have: keep it as sent.
            if lower == "content-length" and self.command != "HEAD":
                continue
            self.send_header(name, value)
        no_body = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
        if not no_body:
            self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not no_body and data:
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = handle_any


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request, client_address):
        kind, error = sys.exc_info()[:2]
        # A port probe (connect, then close) or a client that hung up: nothing to say.
        if isinstance(error, (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError)):
            return
        # Plain HTTP to the TLS port, a handshake that failed, a timeout: one line.
        if isinstance(error, (ssl.SSLError, OSError)):
            sys.stderr.write(f"{client_address[0]}:{client_address[1]}: {kind.__name__}: {error}\n")
        else:
            super().handle_error(request, client_address)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", type=int, required=True, help="port on 127.0.0.1")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--upstream", required=True, help="http://HOST:PORT")
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password-file", required=True)
    p.add_argument("--api-key-file", required=True)
    p.add_argument("--upstream-timeout", type=float, default=300)
    a = p.parse_args()

    up = urllib.parse.urlsplit(a.upstream)
    if up.scheme != "http" or not up.hostname:
        p.error("--upstream must be http://HOST:PORT")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    tls.load_cert_chain(a.cert, a.key)
    tls.set_alpn_protocols(["http/1.1"])

    server = Server((a.host, a.listen), Handler)
    server.tls = tls
    server.up_host, server.up_port = up.hostname, up.port or 80
    server.up_timeout = a.upstream_timeout
    server.basic = f"{a.user}:{read_secret(a.password_file)}".encode()
    server.api_key = read_secret(a.api_key_file).encode()
    sys.stderr.write(f"https-proxy: https://{a.host}:{a.listen} -> {a.upstream}\n")
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
