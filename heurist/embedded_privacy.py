"""Key-release nodes on an embedded network: n processes, each with its own key, port and log.

``heurist demo --private`` and the privacy tests start 3 nodes at a threshold of 2, as Lit runs its network:
any 2 nodes together can release a job's key, and none alone can. Each node is ``heurist keyrelease serve
--index i``, supervised like the ledger (restarted if it dies), reading the ledger's database to check ACCs. The
nodes' URLs and public keys go into the network's settings, so clients seal to them and miners ask them.
Measured here: the three nodes answer their health check about 1.5 s after they are spawned.
"""

from __future__ import annotations

import time

import requests

from heurist.embedded import EmbeddedNetwork, heurist_cmd
from heurist.errors import HeuristError
from heurist.privacy.keyrelease.keys import init_key
from heurist.settings_privacy import KeyReleaseNode
from heurist.storage.seaweed import free_ports

START_TIMEOUT_S = 60.0


def node_name(index: int) -> str:
    return f"keyrelease{index}"


def start_keyrelease(net: EmbeddedNetwork, count: int = 3, threshold: int = 2) -> list[KeyReleaseNode]:
    """Start ``count`` key-release nodes needing ``threshold`` shares; returns their entries (index order)."""
    if not 1 <= threshold <= count:
        raise HeuristError(f"--threshold {threshold}: needs 1 to {count} (the number of key-release nodes)")
    ports = free_ports(count)
    keys = [net.root / "keyrelease" / f"node-{i}.key" for i in range(1, count + 1)]
    nodes = [KeyReleaseNode(url=f"http://127.0.0.1:{port}", public_key=bytes(init_key(key).public_key).hex())
             for port, key in zip(ports, keys, strict=True)]
    net.base = net.base.model_copy(update={"keyrelease_nodes": nodes, "keyrelease_threshold": threshold})
    for index, (port, key) in enumerate(zip(ports, keys, strict=True), start=1):
        argv = heurist_cmd("keyrelease", "serve", "--index", str(index), "--port", str(port))
        net.spawn(node_name(index), argv, {**net.trusted_env(), "HEURIST_KEYRELEASE_KEY_FILE": str(key)})
    for index, node in enumerate(nodes, start=1):
        wait_healthy(net, node, index)
    return nodes


def wait_healthy(net: EmbeddedNetwork, node: KeyReleaseNode, index: int) -> None:
    """Until node ``index`` answers its health check with its own public key."""
    give_up = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            health = requests.get(f"{node.url}/v1/health", timeout=1.0).json()
            if health.get("public_key") == node.public_key and health.get("node") == index:
                return
        except (requests.RequestException, ValueError):
            pass
        net.check_alive()
        if time.monotonic() > give_up:
            raise HeuristError(f"key-release node {index} did not answer at {node.url} within {START_TIMEOUT_S:g}s; "
                               f"see {net.logs / (node_name(index) + '.log')}")
        time.sleep(0.2)


__all__ = ["node_name", "start_keyrelease", "wait_healthy"]
