"""A second Ray node on 127.0.0.1, joined to the local cluster's head: `ray start --address ... --block` for a worker
node, in Ray's single-machine mode.

Ray binds its servers (GCS, raylets, object managers, dashboard agents) to 127.0.0.1 only when a node's address is
127.0.0.1; any other address, 127.0.0.2 included, makes them listen on every interface. Two nodes on 127.0.0.1 are
what Ray's own test clusters run (`ray.cluster_utils.Cluster`), but `ray start` refuses a second node unless the
machine is in multi-node mode (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`), and that mode replaces 127.0.0.1 with the
machine's routed address. So this starts the node as `ray start` would, without that check: the same `Node`
object, blocking until SIGTERM, then stopping the node's processes.

    python cluster/local/ray_node.py --address 127.0.0.1:GCS_PORT --num-cpus 1 [--node-manager-port P ...]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

PORT_FLAGS = (
    "node_manager_port",
    "object_manager_port",
    "metrics_export_port",
    "runtime_env_agent_port",
    "dashboard_agent_listen_port",
    "metrics_agent_port",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--address", required=True, help="the head's GCS, 127.0.0.1:PORT")
    ap.add_argument("--num-cpus", type=float, required=True)
    for flag in PORT_FLAGS:
        ap.add_argument("--" + flag.replace("_", "-"), type=int, default=0)
    args = ap.parse_args()
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        sys.exit("ray_node.py runs in Ray's single-machine mode: set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0")
    import ray._private.node
    from ray._private.parameter import RayParams

    params = RayParams(
        node_ip_address="127.0.0.1",
        gcs_address=args.address,
        num_cpus=args.num_cpus,
        **{flag: getattr(args, flag) or None for flag in PORT_FLAGS},
    )
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=False, spawn_reaper=True, connect_only=False)
    print(f"ray node up: 127.0.0.1, joined {args.address}", flush=True)
    while not stop:
        time.sleep(0.5)
    node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)


if __name__ == "__main__":
    main()
