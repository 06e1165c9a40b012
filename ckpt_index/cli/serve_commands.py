"""``ckpt-index serve``: the read-only web app over the index (the ``web`` extra).

The web stack (Starlette, uvicorn, Jinja2) is imported inside the command, so that importing the
CLI stays free of it; without the extra the command says how to install it.
"""

from __future__ import annotations

import ipaddress
import sys
from importlib.util import find_spec
from typing import Any

import click

from ckpt_index.cli.common import db_option, friendly_errors

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _address(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}/"


@click.command()
@db_option
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to listen on. Anything but loopback lets others on the network read the "
    "index: there is no authentication.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port to listen on (0: any free port; the address printed says which).",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
@friendly_errors
def serve(db: str | None, host: str, port: int, open_browser: bool) -> None:
    """Browse the index in a web browser: a read-only web app (needs the `web` extra).

    Pages: Checkpoints (the filters, sorting and --where language of `query`), Experiment
    (metric curves), Checkpoint, Compare (`diff` and the curves overlaid) and Health (the
    `validate` report); they follow the index while training writes to it. Each answers JSON
    with `query --format json`'s field names, described by /openapi.json:

    \b
        /api/checkpoints              the Checkpoints page (query's filters)
        /api/experiments/NAME         an experiment's checkpoints and curve
        /api/checkpoint?path=P        a checkpoint, where each value came from
        /api/compare?path=A&path=B    diff's rows (2 to 6 paths)
        /api/compare/curves?path=...  their experiments' curves
        /api/health                   validate's report and index statistics
        /api/version                  the index's fingerprint (304: unchanged)

    The index is never created, migrated or written, and no file is served but the app's own
    assets. Exit 2 when there is no index or it needs `ckpt-index db upgrade`.

    Example:

    \b
        ckpt-index serve
        ckpt-index serve --db postgresql+psycopg://reader@db/ckpt --port 8080 --open
    """
    missing = [name for name in ("starlette", "uvicorn", "jinja2") if find_spec(name) is None]
    if missing:
        raise click.ClickException(
            f"ckpt-index serve needs the web extra ({', '.join(missing)} missing): "
            "pip install 'ckpt-index[web]'"
        )
    import uvicorn
    from sqlalchemy.engine import make_url

    from ckpt_index.web.app import create_app

    loopback = is_loopback(host)
    # On loopback, only requests naming this machine are served: a web page elsewhere cannot
    # reach the index through DNS rebinding.
    allowed = ["127.0.0.1", "localhost", host] if loopback and ":" not in host else None
    app = create_app(db, allowed_hosts=allowed)
    reader = app.state.reader
    reader.open()  # a missing or outdated index is reported now (exit 2), not per request
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="on", server_header=False
    )
    sock = config.bind_socket()
    sock.listen(2048)  # connections wait in the backlog from now on, until the server starts
    bound_port = sock.getsockname()[1]
    url = _address(host, bound_port)
    shown_db = make_url(reader.url).render_as_string(hide_password=True)
    click.echo(f"Serving {shown_db} (read-only) at {url}  (Ctrl+C stops)")
    if not loopback:
        click.echo(
            f"warning: listening on {host}: anyone who can reach this address can read the "
            "index; there is no authentication",
            err=True,
        )
    sys.stdout.flush()
    if open_browser:
        _open_later(url)
    uvicorn.Server(config).run(sockets=[sock])


def _open_later(url: str) -> Any:
    import threading
    import webbrowser

    thread = threading.Timer(0.3, webbrowser.open, args=(url,))
    thread.daemon = True
    thread.start()
    return thread
