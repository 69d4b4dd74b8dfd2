"""`undiffuse serve RUN`: the local web page (serve/app.py) behind uvicorn, on this machine only by default."""
from __future__ import annotations

import socket
import sys
from pathlib import Path

from ..errors import UsageError
from .flags import add_run, load_run

WILDCARDS = ("0.0.0.0", "::", "")


def add(sub) -> None:
    p = sub.add_parser("serve", help="a local web page: sample and watch, inpaint, img2img, upscale", description=(
        "Serve a web page for RUN on this machine: pick sampler, steps, seed, label and guidance, watch "
        "the images emerge from noise, download the grid; paint a mask on an uploaded image to inpaint "
        "it, or turn a sketch into a sample (img2img); for an upscale run, upscale an uploaded image. "
        "One job runs at a time; others wait in a queue."))
    add_run(p, weights=False)
    p.add_argument("--port", type=int, default=7860, help="default: 7860 (0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a host name (or address) the page may be reached by, beyond localhost; repeatable. "
                        "Requests naming any other host are refused, so that a web page elsewhere cannot reach "
                        "the server through DNS rebinding")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..serve import LOCAL_HOSTS, make_app

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must lie in [0, 65535], got {args.port}")
    hosts = allowed_hosts(args.host, args.allow_host)
    loaded = load_run(args)
    sock = _listen(args.host, args.port)
    app = make_app(loaded, name=Path(args.run).resolve().name, allowed_hosts=hosts)
    host, port = sock.getsockname()[:2]
    if args.host not in LOCAL_HOSTS:
        print(f"undiffuse serve: warning: listening on {args.host}, beyond this machine: anyone who can reach it "
              f"can use the page; it answers to {', '.join(hosts)} (add names with --allow-host)", file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"undiffuse serve: {loaded.image_size}x{loaded.image_size} model from {args.run} at http://{shown}:{port}/ "
          "(Ctrl-C stops)", flush=True)
    _serve(app, sock)
    return 0


def allowed_hosts(host: str, extra: list[str]) -> list[str]:
    """The Host names the page answers to: localhost, the bound address when it is a specific one
    (not a wildcard such as 0.0.0.0), and each --allow-host."""
    from ..serve.app import LOCAL_HOSTS

    names = [*LOCAL_HOSTS, *([] if host in WILDCARDS else [host]), *extra]
    for name in extra:
        if not name or any(c in name for c in "/ @?#"):
            raise UsageError(f"--allow-host takes a host name or address such as myhost.local, got {name!r}")
    return list(dict.fromkeys(names))


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, or one clear error when the address is taken or cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({e.strerror}); is another server using it? "
                         "Choose another --port") from None
    return sock


def _serve(app, sock: socket.socket) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            app.state.queue.close()  # running jobs stop at their next step, so that their streams end
            await super().shutdown(sockets)

    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=5)
    try:
        Server(config).run(sockets=[sock])
    finally:
        app.state.queue.close()
        sock.close()
        print("undiffuse serve: stopped", file=sys.stderr)
