"""A gRPC proxyless xDS client for the proxyless test.

Dials `xds:///<target>` (the bootstrap comes from GRPC_XDS_BOOTSTRAP) once, then serves commands
on stdin, one per line, answering each with one JSON line on stdout:

    call <n>   -> {"answers": [<instance name>, ...], "errors": ["<code>: <details>", ...]}

Each call is `/meridian.test.Echo/Who` with a 10 s deadline; wait_for_ready, so the first calls
wait for the xDS resolution instead of failing fast.

usage: xds_client.py <target>
"""

import json
import sys

import grpc


def main() -> None:
    target = sys.argv[1]
    channel = grpc.insecure_channel(f"xds:///{target}")
    who = channel.unary_unary("/meridian.test.Echo/Who")
    for line in sys.stdin:
        command = line.split()
        if not command:
            continue
        if command[0] != "call" or len(command) != 2:
            print(json.dumps({"answers": [], "errors": [f"bad command {line.strip()!r}"]}), flush=True)
            continue
        answers, errors = [], []
        for _ in range(int(command[1])):
            try:
                answers.append(who(b"", timeout=10, wait_for_ready=True).decode())
            except grpc.RpcError as e:
                errors.append(f"{e.code().name}: {e.details()}")
        print(json.dumps({"answers": answers, "errors": errors}), flush=True)
    channel.close()


if __name__ == "__main__":
    main()
