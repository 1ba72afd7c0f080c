"""``ray start`` for a cluster on one host, whose nodes stay on 127.0.0.1.

Ray's CLI replaces a ``--node-ip-address`` of 127.0.0.1 with the host's routable address
(``resolve_ip_for_localhost``: made for nodes that other hosts must reach), so the raylets of
:mod:`serving.kube.localcluster` would register, and talk to each other, on the machine's
network address. Every node of that cluster is on this host, so loopback is the address they
are given: this runs Ray's own CLI with that one substitution turned off.

Usage: ``python -m serving.kube.raystart start ...`` (the arguments of ``ray start``).
"""

from __future__ import annotations


def main() -> None:
    import ray._private.services as services
    from ray.scripts.scripts import main as ray_cli

    services.resolve_ip_for_localhost = lambda host: host
    ray_cli()


if __name__ == "__main__":
    main()
