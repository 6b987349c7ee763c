"""Command line: ``sidecache run | validate | report``. Parses arguments, maps errors to exit codes.

``run`` validates the policy and binds both listeners before anything else, so a
bad file or a taken port fails fast with exit 2 (policy) or 1 (bind); then it serves in
this process, or with ``--workers N`` hands over to ``supervisor.py``.
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import sys
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import replace

import orjson

from proxy import __version__
from proxy.errors import PolicyError
from proxy.obs.logs import write_line
from proxy.ops import audit
from proxy.ops.explain import RequestError, explain
from proxy.ops.explain import render as render_explanation
from proxy.ops.report import render
from proxy.policy.load import LoadedPolicy, describe, format_warning, load_policy, parse_policy
from proxy.server.worker import bind, parse_address
from proxy.supervisor import Supervisor, run_worker

EXIT_POLICY = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidecache", description="caching reverse proxy")
    parser.add_argument("--version", action="version", version=f"sidecache {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start the proxy")
    run.add_argument("--policy", required=True, help="policy YAML file")
    run.add_argument("--listen", default="0.0.0.0:8080", help="proxy HOST:PORT")
    run.add_argument("--admin-listen", default="127.0.0.1:9090", help="admin HOST:PORT")
    run.add_argument("--origin", help="origin URL (overrides the policy file)")
    run.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    validate = commands.add_parser("validate", help="check a policy file")
    validate.add_argument("file")
    report = commands.add_parser("report", help="per-route figures and advice from /stats")
    report.add_argument("--admin", default="127.0.0.1:9090", help="admin HOST:PORT or URL")
    report.add_argument("--json", action="store_true", help="print the /stats JSON as is")
    explain = commands.add_parser("explain", help="what the proxy would do with one request")
    explain.add_argument("--policy", required=True, help="policy YAML file")
    explain.add_argument("url", help="http://HOST/path?query (or /path with -H 'Host: …')")
    explain.add_argument("-X", dest="method", default="GET", help="request method")
    explain.add_argument("-H", dest="headers", action="append", default=[], help="'Name: value'")
    explain.add_argument("--json", action="store_true", help="the same data as JSON")
    explain.add_argument("--admin", help="HOST:PORT of a running proxy: what it holds now")
    audit = commands.add_parser("audit", help="scan the Redis/Memcached backends per route")
    audit.add_argument("--policy", required=True, help="policy YAML file")
    audit.add_argument("--json", action="store_true", help="the findings as JSON")
    audit.add_argument("--sample", type=int, help="inspect at most N keys per backend")
    return parser


def _load(path: str, origin: str | None) -> LoadedPolicy:
    loaded = load_policy(path)
    if origin:
        # Re-validate with the override so a bad --origin is reported like a bad file.
        text = open(path, encoding="utf-8").read()  # noqa: SIM115
        loaded = parse_policy(text, path)
        policy = loaded.policy.model_validate({**loaded.policy.model_dump(), "origin": origin})
        loaded = replace(loaded, policy=policy)
    return loaded


def _report(error: PolicyError) -> int:
    lines = [(i.line, i.column, str(i)) for i in error.issues]
    lines += [(w.line, w.column, format_warning(w)) for w in error.warnings]
    for *_, text in sorted(lines, key=lambda line: line[:2]):
        print(text, file=sys.stderr)
    print(f"{len(error.issues)} error(s); the policy was not loaded", file=sys.stderr)
    return EXIT_POLICY


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        loaded = load_policy(args.file)
    except PolicyError as error:
        return _report(error)
    _warn(loaded)
    print(f"{args.file}: ok: {loaded.summary()}")
    for route in loaded.routes:
        print(f"  {describe(route)}")
    return 0


def _warn(loaded: LoadedPolicy) -> None:
    for warning in loaded.warnings:
        print(format_warning(warning), file=sys.stderr)


def _listen(what: str, value: str, *, reuse_port: bool) -> socket.socket:
    """A bound listener, or ``OSError`` whose text names the listener and the address:
    ``cannot listen on proxy port 0.0.0.0:8080: address already in use``."""
    try:
        host, port = parse_address(value)
    except ValueError as error:
        raise OSError(f"cannot listen on {what} {value}: expected HOST:PORT") from error
    if port > 65535:  # bind() would raise OverflowError, not OSError
        raise OSError(f"cannot listen on {what} {value}: the port must be 0-65535")
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        return bind((host, port), reuse_port=reuse_port)
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        raise OSError(f"cannot listen on {what} {shown}: {reason}") from error


def cmd_run(args: argparse.Namespace) -> int:
    try:
        loaded = _load(args.policy, args.origin)
    except PolicyError as error:
        return _report(error)
    except ValueError as error:
        print(f"--origin: {error}", file=sys.stderr)
        return EXIT_POLICY
    if args.workers < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return EXIT_POLICY
    _warn(loaded)
    reuse = args.workers > 1
    try:
        proxy_sock = _listen("proxy port", args.listen, reuse_port=reuse)
    except OSError as error:
        print(error, file=sys.stderr)
        return 1
    try:
        admin_sock = _listen("admin port", args.admin_listen, reuse_port=reuse)
    except OSError as error:
        proxy_sock.close()
        print(error, file=sys.stderr)
        return 1
    listen, admin = parse_address(args.listen), parse_address(args.admin_listen)
    write_line(
        {
            "event": "listening",
            "msg": f"sidecache {__version__} listening on {args.listen} "
            f"(admin {args.admin_listen}), {loaded.summary()}, workers {args.workers}",
            "pid": os.getpid(),
        }
    )
    loader = functools.partial(_load, origin=args.origin)
    if args.workers == 1:
        run_worker(loaded, proxy_sock, admin_sock, loader)
        return 0
    supervisor = Supervisor(args.workers, loaded, (listen, admin), (proxy_sock, admin_sock), loader)
    return supervisor.run()


def cmd_report(args: argparse.Namespace) -> int:
    base = args.admin if "://" in args.admin else f"http://{args.admin}"
    url = base.rstrip("/") + "/stats"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            stats = orjson.loads(response.read())
    except (OSError, ValueError) as error:
        print(f"cannot read {url}: {error}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(stats, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render(stats))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    try:
        loaded = load_policy(args.policy)
    except PolicyError as error:
        return _report(error)
    try:
        found = explain(loaded, args.method, args.url, args.headers).as_json()
    except RequestError as error:
        print(f"explain: {error}", file=sys.stderr)
        return EXIT_POLICY
    code = 0
    if args.admin:
        base = args.admin if "://" in args.admin else f"http://{args.admin}"
        query = urllib.parse.urlencode(
            [("url", args.url), ("method", args.method)] + [("h", h) for h in args.headers]
        )
        try:
            with urllib.request.urlopen(f"{base.rstrip('/')}/explain?{query}", timeout=10) as got:
                running = orjson.loads(got.read())
            found["now"] = running.get("now")
            if running.get("store_key") != found["store_key"]:
                found["now"] = {
                    "error": "the running proxy's policy keys this request as "
                    f"{running.get('store_key')} (route {running.get('route')})"
                }
        except (OSError, ValueError) as error:
            print(f"cannot read {base}/explain: {error}", file=sys.stderr)
            code = 1
    if args.json:
        sys.stdout.write(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render_explanation(found))
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "explain":
        return cmd_explain(args)
    if args.command == "audit":
        return audit.main(args)
    if args.command == "validate":
        return cmd_validate(args)
    if args.command == "report":
        return cmd_report(args)
    return cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
