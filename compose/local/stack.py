#!/usr/bin/env python3
"""Local, Docker-free service stack for detektor-tracker: Kafka (KRaft) + PostgreSQL.

Standard library only (it runs before any virtualenv exists).

    python3 compose/local/stack.py up [--only kafka|postgres]
    python3 compose/local/stack.py down [--only kafka|postgres]
    python3 compose/local/stack.py status
    python3 compose/local/stack.py reset [--all]
    python3 compose/local/stack.py start-kafka | stop-kafka [--kill]
    python3 compose/local/stack.py start-postgres | stop-postgres [--kill]
    python3 compose/local/stack.py env

Everything lives in <repo>/.stack/ (see compose/local/README.md). The code is the package next to this
script, stackctl/: one module per service (kafka.py, postgres.py) behind one interface (service.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also under `python -P` / `-I`

from stackctl.cli import main

if __name__ == "__main__":
    sys.exit(main())
