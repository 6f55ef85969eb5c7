#!/usr/bin/env python3
"""A generic gRPC client, as an operator's tooling would be: it knows no .proto file and
learns every service, method and message from the server's reflection service.

  admin_client.py ADDR services              list the services the server offers
  admin_client.py ADDR methods SERVICE        list a service's methods
  admin_client.py ADDR call SERVICE/METHOD JSON
                                              call a unary method with a JSON request and
                                              print the JSON response
  admin_client.py ADDR health [SERVICE]       grpc.health.v1 Check: SERVING, NOT_SERVING...

Errors print "ERROR <status code name> <details>" on stdout and exit 1.
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def pool_for(channel):
    return descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    addr, cmd, args = argv[1], argv[2], argv[3:]
    with grpc.insecure_channel(addr) as channel:
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
                request = json_format.Parse(args[1] if len(args) > 1 else "{}", request_cls())
                call = channel.unary_unary(
                    "/%s/%s" % (service_name, method_name),
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=response_cls.FromString,
                )
                response = call(request, timeout=10)
                print(json.dumps(json_format.MessageToDict(response), sort_keys=True))
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
            print("ERROR %s %s" % (e.code().name, e.details()))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
