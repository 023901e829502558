"""A real MCP server for Sluice's tests, built on the official Python SDK
(PyPI `mcp`), serving streamable HTTP on loopback.

    python server.py PORT CALLS_FILE [TOKEN]

Each call of a tool appends a line `name key` to CALLS_FILE before it runs,
so a test can count executions across Sluice replicas and restarts. With
TOKEN, every request must carry `Authorization: Bearer TOKEN`.
"""

import sys

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer

port = int(sys.argv[1])
calls_file = sys.argv[2]
token = sys.argv[3] if len(sys.argv) > 3 else None

server = MCPServer("sluice-test")


def record(name: str, key: str) -> None:
    with open(calls_file, "a", encoding="utf-8") as f:
        f.write(f"{name} {key}\n")
        f.flush()


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    record("add", f"{a}+{b}")
    return a + b


@server.tool()
async def slow(key: str, seconds: float) -> str:
    """Waits, then says it is done (for tests that stop Sluice meanwhile)."""
    record("slow", key)
    await anyio.sleep(seconds)
    return f"slow {key} done"


@server.tool()
def broken(reason: str) -> str:
    """Always fails, saying why."""
    record("broken", reason)
    raise ValueError(f"broken on purpose: {reason}")


app = server.streamable_http_app()


def guarded(inner):
    """Refuses requests without the bearer token, as a protected server does."""

    async def asgi(scope, receive, send):
        if scope["type"] == "http" and token is not None:
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization") != f"Bearer {token}".encode():
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
        await inner(scope, receive, send)

    return asgi


uvicorn.run(guarded(app), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
