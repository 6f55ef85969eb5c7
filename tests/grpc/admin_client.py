#!/usr/bin/env python3
"""A generic gRPC client, as an operator's tooling would be: it knows no .proto file and
learns every service, method and message from the server's reflection service.

  admin_client.py ADDR services              list the services the server offers
  admin_client.py ADDR methods SERVICE        list a service's methods
  admin_client.py ADDR call SERVICE/METHOD JSON|@FILE
                                              call a unary method with a JSON request and
                                              print the JSON response
  admin_client.py ADDR health [SERVICE]       grpc.health.v1 Check: SERVING, NOT_SERVING...
  admin_client.py ADDR stream SERVICE/METHOD JSON [WAIT [MAX [HOLD]]]
                                              open a server stream, read nothing for WAIT
                                              seconds, then print up to MAX messages (all
                                              by default) as JSON lines, then keep the
                                              stream open HOLD seconds before closing it
  admin_client.py ADDR poll SERVICE/METHOD JSON INTERVAL OUTFILE
                                              call a unary method every INTERVAL seconds
                                              until killed; append "<ms> <bytes>" per call
                                              to OUTFILE (the response left undecoded, so
                                              the time is the server's and the transfer's)
  admin_client.py ADDR churn SERVICE/METHOD JSON N
                                              N times: open a server stream, read its first
                                              message, cancel it

Errors print "ERROR <status code name> <details>" on stdout (after any messages a stream
delivered first) and exit 1.
"""
import time
import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def json_arg(text):
    """A JSON argument, or with a leading @ the JSON in that file (for requests larger
    than a command line may carry)."""
    if text.startswith("@"):
        with open(text[1:]) as f:
            return f.read()
    return text


def pool_for(channel):
    return descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))


def method_of(channel, full_name):
    """The request and response classes of SERVICE/METHOD, learnt through reflection."""
    service_name, method_name = full_name.rsplit("/", 1)
    method = pool_for(channel).FindServiceByName(service_name).FindMethodByName(method_name)
    return (
        "/%s/%s" % (service_name, method_name),
        message_factory.GetMessageClass(method.input_type),
        message_factory.GetMessageClass(method.output_type),
    )


def open_stream(channel, full_name, request_json):
    path, request_cls, response_cls = method_of(channel, full_name)
    call = channel.unary_stream(
        path,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_cls.FromString,
    )
    return call(json_format.Parse(request_json, request_cls()))


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    addr, cmd, args = argv[1], argv[2], argv[3:]
    # Streams get a fixed flow-control window: a stream the client does not read then
    # stalls the server after a known amount, as a slow client on a slow link would (BDP
    # probing would otherwise grow the window while the transport buffers unread
    # messages). Other calls keep grpc's defaults.
    options = []
    if cmd in ("stream", "churn"):
        options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65536)]
    with grpc.insecure_channel(addr, options=options) as channel:
        try:
            if cmd == "services":
                db = ProtoReflectionDescriptorDatabase(channel)
                for name in db.get_services():
                    print(name)
            elif cmd == "methods":
                service = pool_for(channel).FindServiceByName(args[0])
                for m in service.methods:
                    print(m.name)
            elif cmd == "call":
                service_name, method_name = args[0].rsplit("/", 1)
                pool = pool_for(channel)
                method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
                request_cls = message_factory.GetMessageClass(method.input_type)
                response_cls = message_factory.GetMessageClass(method.output_type)
                request = json_format.Parse(json_arg(args[1] if len(args) > 1 else "{}"), request_cls())
                call = channel.unary_unary(
                    "/%s/%s" % (service_name, method_name),
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=response_cls.FromString,
                )
                response = call(request, timeout=10)
                print(json.dumps(json_format.MessageToDict(response), sort_keys=True))
            elif cmd == "stream":
                wait = float(args[2]) if len(args) > 2 else 0.0
                most = int(args[3]) if len(args) > 3 else -1
                hold = float(args[4]) if len(args) > 4 else 0.0
                stream = open_stream(channel, args[0], args[1] if len(args) > 1 else "{}")
                time.sleep(wait)
                read = 0
                for message in stream:
                    print(json.dumps(json_format.MessageToDict(message), sort_keys=True), flush=True)
                    read += 1
                    if read == most:
                        break
                time.sleep(hold)
                stream.cancel()
            elif cmd == "poll":
                path, request_cls, _ = method_of(channel, args[0])
                request = json_format.Parse(args[1], request_cls())
                call = channel.unary_unary(
                    path,
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=None,
                )
                interval = float(args[2])
                with open(args[3], "a") as out:
                    while True:
                        started = time.monotonic()
                        raw = call(request, timeout=10)
                        took = time.monotonic() - started
                        out.write("%.3f %d\n" % (took * 1000, len(raw)))
                        out.flush()
                        time.sleep(max(0.0, interval - took))
            elif cmd == "churn":
                for _ in range(int(args[2])):
                    stream = open_stream(channel, args[0], args[1])
                    next(stream)
                    stream.cancel()
                print("churned %s" % args[2])
            elif cmd == "health":
                stub = health_pb2_grpc.HealthStub(channel)
                reply = stub.Check(
                    health_pb2.HealthCheckRequest(service=args[0] if args else ""), timeout=10
                )
                print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
            else:
                print(__doc__, file=sys.stderr)
                return 2
        except grpc.RpcError as e:
            print("ERROR %s %s" % (e.code().name, e.details()), flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
