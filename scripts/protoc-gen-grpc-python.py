#!/usr/bin/env python3
"""protoc plugin that writes Python gRPC stubs (`*_pb2_grpc.py`) for buf.

The gRPC stub generator ships only inside grpcio-tools' bundled protoc (as its
`--grpc_python_out`), not as a `protoc-gen-*` executable that buf can run, and
buf proxies to protoc only for protoc's own generators (python, pyi, ...).
This plugin bridges the two: it reads buf's CodeGeneratorRequest, hands the
files to grpcio-tools' protoc as a descriptor set, and returns what protoc
wrote. The generator is the pinned grpcio-tools (requirements-tools.txt), the
same one that makes the messages (proto/buf.gen.yaml). Plugin options are
passed on as --grpc_python_opt.
"""

import os
import sys
import tempfile

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def main() -> int:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = plugin_pb2.CodeGeneratorResponse(
        # The stubs only name services and message classes: proto3 `optional`
        # and editions change nothing in them.
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
        | plugin_pb2.CodeGeneratorResponse.FEATURE_SUPPORTS_EDITIONS,
        minimum_edition=descriptor_pb2.EDITION_PROTO2,
        maximum_edition=descriptor_pb2.EDITION_2023,
    )
    with tempfile.TemporaryDirectory() as tmp:
        descriptors = os.path.join(tmp, "in.binpb")
        out = os.path.join(tmp, "out")
        os.mkdir(out)
        with open(descriptors, "wb") as f:
            f.write(descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString())
        args = ["grpc_tools.protoc", f"--descriptor_set_in={descriptors}", f"--grpc_python_out={out}"]
        if request.parameter:
            args.append(f"--grpc_python_opt={request.parameter}")
        args.extend(request.file_to_generate)
        # protoc prints its own errors on stderr, which buf shows.
        if protoc.main(args) != 0:
            response.error = "grpcio-tools' protoc failed (see above)"
        else:
            for root, _, names in os.walk(out):
                for name in sorted(names):
                    path = os.path.join(root, name)
                    with open(path, encoding="utf-8") as f:
                        response.file.add(name=os.path.relpath(path, out), content=f.read())
    sys.stdout.buffer.write(response.SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main())
