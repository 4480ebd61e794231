#!/usr/bin/env python3
"""One call path through the generated Python client (make clients), against
a running lifecycle service: CreateAccount, then GetAccount, then an invalid
CreateAccount whose google.rpc.BadRequest is read. Prints one `ok` line, or
says what failed and exits 1.

Usage: .venv/bin/python scripts/python-client-smoke.py [HOST:PORT]
(default localhost:$LIFECYCLE_PORT, or localhost:50051 as under `make run`).
"""

import os
import sys
import uuid

# The generated client is not a package on the path: build/clients/python is.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "clients", "python"))

import grpc  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402  (googleapis-common-protos)
from grpc_status import rpc_status  # noqa: E402

from cascade.common.v1 import types_pb2  # noqa: E402
from cascade.lifecycle.v1 import lifecycle_service_pb2 as lifecycle  # noqa: E402
from cascade.lifecycle.v1 import lifecycle_service_pb2_grpc as lifecycle_grpc  # noqa: E402

# With authentication off (development, and the smoke test) the tenant and the
# actor are metadata; with auth.mode = "jwt" send ("authorization", "Bearer ...").
METADATA = (("x-tenant-id", "smoke-python"), ("x-actor-id", "python-client-smoke"))
TIMEOUT = 10  # seconds: becomes grpc-timeout, so a hung server fails the check


def fail(message: str) -> None:
    print(f"PYTHON CLIENT FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    address = sys.argv[1] if len(sys.argv) > 1 else f"localhost:{os.environ.get('LIFECYCLE_PORT', '50051')}"
    # A unique name and domain: the check can run again on the same data.
    suffix = uuid.uuid4().hex[:12]
    name = f"Python Client {suffix}"
    with grpc.insecure_channel(address) as channel:
        client = lifecycle_grpc.LifecycleServiceStub(channel)
        try:
            created = client.CreateAccount(
                lifecycle.CreateAccountRequest(
                    account=lifecycle.Account(name=name, domain=f"python-{suffix}.example"),
                    request_id=f"python-client-smoke-{suffix}",
                ),
                metadata=METADATA,
                timeout=TIMEOUT,
            )
            account_id = created.account.account_id
            if not account_id:
                fail(f"CreateAccount returned no account_id: {created}")
            fetched = client.GetAccount(
                lifecycle.GetAccountRequest(account_id=account_id), metadata=METADATA, timeout=TIMEOUT
            ).account
        except grpc.RpcError as error:
            fail(f"{error.code().name} from {address}: {error.details()}")
        if fetched.name != name:
            fail(f"GetAccount returned name {fetched.name!r}, not {name!r}")
        if fetched.stage != types_pb2.ACCOUNT_STAGE_TARGETED:
            fail(f"a new account is {types_pb2.AccountStage.Name(fetched.stage)}, not ACCOUNT_STAGE_TARGETED")

        # Errors carry google.rpc details; grpcio-status decodes them.
        try:
            client.CreateAccount(
                lifecycle.CreateAccountRequest(account=lifecycle.Account(name="")), metadata=METADATA, timeout=TIMEOUT
            )
            fail("an empty name was accepted")
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                fail(f"an empty name answered {error.code().name}: {error.details()}")
            status = rpc_status.from_call(error)
            fields = []
            for detail in status.details if status else []:
                bad_request = error_details_pb2.BadRequest()
                if detail.Unpack(bad_request):
                    fields += [violation.field for violation in bad_request.field_violations]
            if "account.name" not in fields:
                fail(f"no BadRequest naming account.name in the error details (fields: {fields})")

    print(
        f"ok   python client: account {account_id} round-trips (CreateAccount, GetAccount, stage TARGETED), "
        "an empty name gives INVALID_ARGUMENT with a BadRequest naming account.name"
    )


if __name__ == "__main__":
    main()
