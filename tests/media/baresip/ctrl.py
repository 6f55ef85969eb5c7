#!/usr/bin/env python3
"""Sends one command to a baresip ctrl_tcp socket (netstring-framed JSON) and prints the reply.

    ctrl.py PORT COMMAND [PARAMS]       e.g.  ctrl.py 25064 dial sip:b@127.0.0.1:25062
"""
import json
import socket
import sys


def netstring(b: bytes) -> bytes:
    return str(len(b)).encode() + b":" + b + b","


def main() -> int:
    port, command = int(sys.argv[1]), sys.argv[2]
    params = " ".join(sys.argv[3:])
    msg = {"command": command, "params": params, "token": "tl"}
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(netstring(json.dumps(msg).encode()))
        buf = b""
        while True:  # skip events until the response to our token
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
            while b":" in buf:
                n, rest = buf.split(b":", 1)
                if not n.isdigit() or len(rest) < int(n) + 1:
                    break
                body, buf = rest[: int(n)], rest[int(n) + 1:]
                obj = json.loads(body)
                if obj.get("response"):
                    print(obj.get("data", ""))
                    return 0 if obj.get("ok") else 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
