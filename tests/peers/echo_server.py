"""Echo servers from Python's standard library, for the socket grants' tests.

    echo_server.py tcp    a TCP server: each connection's bytes come back
                          as "echo:" and the bytes
    echo_server.py udp    a UDP server: each datagram comes back the same way

Each listens on a free port of 127.0.0.1 and prints "ready PORT".
"""

import socketserver
import sys


class TcpEcho(socketserver.BaseRequestHandler):
    def handle(self):
        data = self.request.recv(4096)
        if data:
            self.request.sendall(b"echo:" + data)


class UdpEcho(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(b"echo:" + data, self.client_address)


kind = sys.argv[1]
server_class, handler = {
    "tcp": (socketserver.ThreadingTCPServer, TcpEcho),
    "udp": (socketserver.ThreadingUDPServer, UdpEcho),
}[kind]
with server_class(("127.0.0.1", 0), handler) as server:
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()
