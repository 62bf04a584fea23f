"""Entry point of a Ray job that distributes a file, a directory or a prefix to every node.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/distribute.py s3://bucket/dataset/ --dest /data/dataset --json

The arguments are those of ``rayfly distribute`` (see ``rayfly distribute --help``). Inside a
job, ``RAY_ADDRESS`` names the job's own cluster, so no ``--address`` is needed; a local path is
the file on the node that runs the job's driver (``--source-node`` names another node). The job
exits 0 when every node holds a verified copy, 1 when some node failed, 2 on bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path

# With --working-dir ., the rayfly shipped with the job is used even where none is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rayfly.cli import main

if __name__ == "__main__":
    main(["distribute", *sys.argv[1:]], prog_name="jobs/distribute.py")
