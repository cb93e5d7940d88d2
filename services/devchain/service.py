"""``python -m services.devchain --data-dir DIR [--host 127.0.0.1] [--port N] [--network regtest]``

Starts the development chain (state in ``DIR/devchain.sqlite3``, kept across restarts). ``--port 0``
picks a free port. Once the server accepts connections it prints one line
``devchain listening on http://HOST:PORT`` and writes ``http://HOST:PORT`` to ``DIR/devchain.url``
(replaced atomically, removed again at shutdown), so a supervisor or a test can wait for either.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from pathlib import Path

from services.devchain.app import create_app
from services.devchain.chain import Chain
from wallet.network import NETWORKS

URL_FILE = "devchain.url"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m services.devchain", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, type=Path, help="where the SQLite state lives")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="0 = pick a free port (default: devchain_port of DIR/cluster.json when present, else 0)",
    )
    p.add_argument("--network", default="regtest", choices=NETWORKS)
    p.add_argument(
        "--block-interval",
        type=float,
        default=None,
        help="mine a block every N seconds while the mempool is not empty (0 = only on POST /dev/mine; "
        "default: block_interval of DIR/cluster.json when present, else 0)",
    )
    return p.parse_args(argv)


async def _auto_mine(chain: Chain, interval: float) -> None:
    """Like a regtest node with a miner attached: a block every ``interval`` seconds while there is
    something to confirm."""
    while True:
        await asyncio.sleep(interval)
        if chain.mempool_txids():
            chain.mine(1)


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; exits 2 when the chain cannot be opened or the address is taken."""
    args = parse_args(argv)
    cluster_file = args.data_dir / "cluster.json"
    cluster = json.loads(cluster_file.read_text()) if cluster_file.exists() else {}
    if args.port is None:
        args.port = int(cluster.get("devchain_port", 0))
    if args.block_interval is None:
        args.block_interval = float(cluster.get("block_interval", 0))
    try:
        chain = Chain(args.data_dir, args.network)
    except ValueError as exc:
        print(f"devchain: {exc}", file=sys.stderr)
        sys.exit(2)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"devchain: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        sys.exit(2)
    sock.listen(512)
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if family == socket.AF_INET6 else f"http://{host}:{port}"
    url_file = args.data_dir / URL_FILE

    app = create_app(chain)

    @app.after_server_start
    async def announce(_app: object) -> None:
        tmp = url_file.with_suffix(".tmp")
        tmp.write_text(url + "\n")
        os.replace(tmp, url_file)
        print(f"devchain listening on {url} (network {args.network}, data {args.data_dir})", flush=True)

    @app.after_server_start
    async def start_miner(_app: object) -> None:
        if args.block_interval > 0:
            asyncio.get_running_loop().create_task(_auto_mine(chain, args.block_interval))

    @app.before_server_stop
    async def withdraw(_app: object) -> None:
        url_file.unlink(missing_ok=True)

    try:
        app.run(sock=sock, single_process=True, access_log=False, motd=False)
    finally:
        chain.close()
