"""``waiter-router``: the command line."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from waiter.settings import REFUSED, SCHEDULER_KINDS, SettingsError, load_settings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="waiter-router", description="A Waiter-compatible autoscaling HTTP router.")
    parser.add_argument("--config", type=Path, help="router config file (YAML); flags override it")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default 9091)")
    parser.add_argument("--tokens", type=Path, help="directory of token YAML files (default config/tokens)")
    parser.add_argument("--router-id", help="this router's id (default: host-pid-random)")
    parser.add_argument("--cluster-name", help="cluster name reported in /settings and tokens")
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="share tokens and state through this Redis: redis://host:port/db, or "
        "redis+sentinel://host:port,host:port/service-name/db (default: memory)",
    )
    parser.add_argument("--scheduler", choices=SCHEDULER_KINDS, help="where instances run (default local)")
    parser.add_argument("--marathon-url", metavar="URL", help="Marathon's base URL, for --scheduler marathon")
    parser.add_argument("--mesos-master", metavar="HOST:PORT", help="a Mesos master, for --scheduler mesos")
    parser.add_argument("--kubernetes-url", metavar="URL", help="the Kubernetes API server, for --scheduler kubernetes")
    parser.add_argument("--workers", type=int, help="router processes on one port, sharing Redis (default 1)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow a non-loopback host with one-user authentication and on-the-fly services (anyone can run commands)",
    )
    parser.add_argument("--worker-of", metavar="URL", help=argparse.SUPPRESS)  # set by the supervisor
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "tokens-dir": str(args.tokens) if args.tokens else None,
        "router-id": args.router_id,
        "cluster-name": args.cluster_name,
        "redis": args.redis,
        "workers": args.workers,
        "insecure": args.insecure,
        "scheduler": {
            "kind": args.scheduler,
            "marathon": {"url": args.marathon_url},
            "mesos": {"master": args.mesos_master},
            "kubernetes": {"api-url": args.kubernetes_url},
        },
    }
    try:
        settings = load_settings(args.config, overrides)
    except SettingsError as exc:
        print(f"waiter-router: invalid configuration:\n{exc}", file=sys.stderr)
        return REFUSED
    if settings.workers > 1 and not settings.redis and not args.worker_of:
        print(
            f"waiter-router: --workers {settings.workers} needs a redis URL (--redis or the config's redis key): "
            "workers share tokens, counts and slot leases through it.",
            file=sys.stderr,
        )
        return REFUSED
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

    import uvloop

    if settings.workers > 1 and not args.worker_of:
        from waiter.supervisor import Supervisor

        worker_argv = [a for a in (argv if argv is not None else sys.argv[1:])]
        return uvloop.run(Supervisor(settings, worker_argv).run())

    from waiter.server import serve

    if args.worker_of:
        settings = replace(settings, scheduler_kind="agent", agent_url=args.worker_of, workers=1)
    try:
        uvloop.run(serve(settings, reuse_port=bool(args.worker_of)))
    except SettingsError as exc:  # refused at start-up (waiter.peers)
        print(f"waiter-router: refusing to start: {exc}", file=sys.stderr)
        return REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
