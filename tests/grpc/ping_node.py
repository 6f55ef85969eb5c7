#!/usr/bin/env python3
"""Calls trunkline.cluster.v1.Replication/Ping on a node's node-to-node listener, as any
gRPC client would (no .proto file: the request is empty, the reply is decoded by hand).

  ping_node.py ADDR                                  plain HTTP/2
  ping_node.py ADDR CA [CERT KEY] [SERVER_NAME]      TLS, trusting CA, presenting CERT/KEY
                                                     (SERVER_NAME: trunkline-cluster)

Prints "OK <node id>" and exits 0, or "ERROR <status code name> <details>" and exits 1.
"""
import sys

import grpc


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    addr = argv[1]
    if len(argv) > 2:
        ca = open(argv[2], "rb").read()
        cert = open(argv[3], "rb").read() if len(argv) > 4 else None
        key = open(argv[4], "rb").read() if len(argv) > 4 else None
        name = argv[5] if len(argv) > 5 else "trunkline-cluster"
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert)
        channel = grpc.secure_channel(
            addr, creds, options=[("grpc.ssl_target_name_override", name)])
    else:
        channel = grpc.insecure_channel(addr)
    ping = channel.unary_unary(
        "/trunkline.cluster.v1.Replication/Ping",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    try:
        reply = ping(b"", timeout=5)
    except grpc.RpcError as e:
        print("ERROR %s %s" % (e.code().name, e.details()))
        return 1
    # PingReply { string node = 1; }: tag 0x0a, a one-byte length (ids are short), the id.
    node = reply[2:].decode("utf-8", "replace") if reply[:1] == b"\x0a" else ""
    print("OK %s" % node)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
