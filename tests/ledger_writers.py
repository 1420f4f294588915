"""Real writer processes for the ledger's concurrency tests.

Each process opens its own ``Store`` and ``Ledger`` on the test's server and writes the
records a test module's function makes for its worker number; the test then compares what
the ledger holds with what was written.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from graphthrift import Store

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent(
    """
    import importlib
    import sys
    sys.path.insert(0, sys.argv[3])
    from graphthrift import Ledger, Store
    module, name = sys.argv[6].split(":")
    make = getattr(importlib.import_module(module), name)
    store = Store(sys.argv[1], home=sys.argv[4])
    ledger = Ledger(store, batch_size=37, flush_interval=0.01)
    ledger.record_many(make(sys.argv[2], int(sys.argv[5]), *sys.argv[7:]))
    ledger.close()
    store.close()
    """
)


def write_from_processes(store: Store, tenant: str, records: str, workers: int, *args: str) -> None:
    """Run ``workers`` processes at once, worker ``w`` writing ``records(tenant, w, *args)``
    (``records`` is ``"module:function"`` in tests/); fails with a worker's stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _SCRIPT,
                store.url,
                tenant,
                str(REPO / "tests"),
                str(store.home),
                str(w),
                records,
                *args,
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
