"""Start a Dask cluster on SLURM for svdharm, and keep it up until you stop this script.

    pip install 'svdharm[dask]' dask-jobqueue
    python examples/slurm_cluster.py --jobs 8 --cores 8 --memory 32GB \
        --scheduler-file ~/svdharm-scheduler.json &
    svdharm harmonize /shared/in /shared/out --reference /shared/reference.json \
        --scheduler-file ~/svdharm-scheduler.json

Each SLURM job runs one Dask worker process with ``--cores`` threads; svdharm runs one task
per thread (one BLAS thread each). Inputs, outputs and the reference must be on a
filesystem every node mounts at the same path, and every node must run the same svdharm
(a shared virtual environment is simplest); svdharm checks both before it starts. Run this
script on a login node inside ``tmux`` or ``screen``, or as its own small SLURM job.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=4, help="SLURM jobs (one worker each)")
    parser.add_argument("--cores", type=int, default=8, help="cores per job (worker threads)")
    parser.add_argument("--memory", default="32GB", help="memory per job")
    parser.add_argument("--walltime", default="04:00:00", help="time limit per job")
    parser.add_argument("--queue", default=None, help="SLURM partition")
    parser.add_argument("--account", default=None, help="SLURM account")
    parser.add_argument(
        "--scheduler-file",
        type=Path,
        default=Path.home() / "svdharm-scheduler.json",
        help="where to write the scheduler's address (pass it to svdharm)",
    )
    args = parser.parse_args()

    from dask.distributed import Client
    from dask_jobqueue import SLURMCluster

    cluster = SLURMCluster(
        cores=args.cores,
        processes=1,
        memory=args.memory,
        walltime=args.walltime,
        queue=args.queue,
        account=args.account,
    )
    cluster.scale(jobs=args.jobs)
    scheduler_file = args.scheduler_file.expanduser()
    scheduler_file.write_text(json.dumps({"address": cluster.scheduler_address}) + "\n")
    print(f"scheduler at {cluster.scheduler_address}; address written to {scheduler_file}")
    with Client(cluster) as client:
        client.wait_for_workers(1)
        print(f"{len(client.scheduler_info()['workers'])} worker(s) up; Ctrl-C to stop the cluster")
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
        try:
            while not stop:
                time.sleep(5)
        except KeyboardInterrupt:
            pass
    cluster.close()
    scheduler_file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
