"""Echo servers from Python's standard library, for the grants' tests.

    echo_server.py tcp    a TCP server: each connection's bytes come back
                          as "echo:" and the bytes
    echo_server.py udp    a UDP server: each datagram comes back the same way
    echo_server.py http   an HTTP server (http.server): any GET or POST is
                          answered 200 "echo:METHOD PATH BODY" (after 1.5 s
                          for a path with /slow); GET /_seen lists the paths
                          asked before, one a line

Each listens on a free port of 127.0.0.1 and prints "ready PORT".
"""

import http.server
import socketserver
import sys
import time


class TcpEcho(socketserver.BaseRequestHandler):
    def handle(self):
        data = self.request.recv(4096)
        if data:
            self.request.sendall(b"echo:" + data)


class UdpEcho(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(b"echo:" + data, self.client_address)


class HttpEcho(http.server.BaseHTTPRequestHandler):
    seen = []

    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/_seen":
            self.answer("".join(p + "\n" for p in HttpEcho.seen).encode())
            return
        HttpEcho.seen.append(self.path)
        if "/slow" in self.path:
            time.sleep(1.5)
        self.answer(f"echo:GET {self.path} ".encode())

    def do_POST(self):
        HttpEcho.seen.append(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.answer(f"echo:POST {self.path} ".encode() + body)

    def log_message(self, *args):
        pass


kind = sys.argv[1]
server_class, handler = {
    "tcp": (socketserver.ThreadingTCPServer, TcpEcho),
    "udp": (socketserver.ThreadingUDPServer, UdpEcho),
    "http": (http.server.ThreadingHTTPServer, HttpEcho),
}[kind]
with server_class(("127.0.0.1", 0), handler) as server:
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()
