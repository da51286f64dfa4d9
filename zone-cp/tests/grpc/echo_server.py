"""A gRPC server for the proxyless test: `/meridian.test.Echo/Who` answers the instance name.

Generic handler, raw bytes (no generated code). Listens on 127.0.0.1 on an ephemeral port, prints
`port <N>` once serving, and stops when its stdin closes (so it never outlives the test).

usage: echo_server.py <instance-name>
"""

import sys
from concurrent import futures

import grpc


def main() -> None:
    name = sys.argv[1].encode()

    def who(_request: bytes, _context: grpc.ServicerContext) -> bytes:
        return name

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "meridian.test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"port {port}", flush=True)
    sys.stdin.read()  # until the test closes our stdin or exits
    server.stop(grace=None)


if __name__ == "__main__":
    main()
