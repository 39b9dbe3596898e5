"""The stack's Prefect server: `prefect server start` (API, UI and services such as the scheduler)
behind a Host-header check, so a page on another origin that rebinds a DNS name to 127.0.0.1 gets 400.

CORS and basic auth come from Prefect's own settings, which `deployments.stack` sets
(PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS, PREFECT_SERVER_API_AUTH_STRING).

Usage: python -m deployments.prefect_server --host H --port P [--allowed-host NAME ...]
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deployments.prefect_server", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=4200, help="port (default 4200)")
    ap.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                    help="a Host header name to accept (repeatable; default: the bind address)")
    a = ap.parse_args(argv)

    import uvicorn
    from prefect.server.api.server import create_app
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    app = TrustedHostMiddleware(create_app(final=True, webserver_only=False),
                                allowed_hosts=a.allowed_host or [a.host])
    uvicorn.run(app, host=a.host, port=a.port, log_level="info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
