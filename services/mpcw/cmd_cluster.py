"""``mpcw cluster status|nodes``."""

from __future__ import annotations

import json

import click

from services.mpcw.cli import data_dir_of, main
from services.mpcw.client import Api


@main.group()
def cluster() -> None:
    """The signer nodes as intake sees them."""


@cluster.command("status")
@click.pass_context
def cluster_status(ctx: click.Context) -> None:
    click.echo(json.dumps(Api(data_dir_of(ctx)).request("GET", "/api/v1/cluster/status"), indent=2))


@cluster.command("nodes")
@click.pass_context
def cluster_nodes(ctx: click.Context) -> None:
    body = Api(data_dir_of(ctx)).request("GET", "/api/v1/cluster/nodes")
    nodes = body["nodes"] if isinstance(body, dict) else body
    for n in nodes:
        click.echo("  ".join(f"{k}={v}" for k, v in n.items()))
