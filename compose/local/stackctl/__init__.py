"""The local, Docker-free service stack behind ``compose/local/stack.py`` (standard library only).

One module a job:

    service.py      the Service interface every service implements, and the start/status steps they share
    kafka.py        how Kafka is run: jars from Maven, server.properties, KRaft format, the broker JVM
    kafka_probe.py  a tiny Kafka protocol client: does the broker answer a Metadata request?
    postgres.py     how PostgreSQL is run: initdb, stack.conf, pg_ctl start/stop, the tracker role and db
    pg_cluster.py   where the PostgreSQL cluster lives, its binaries, as whom they run (root: postgres)
    proc.py         processes: argv from /proc, pid files, terminate and reap
    ports.py        ports: in use, by whom, and the "port already in use" error
    common.py       the state folder, errors, logging, port settings from the environment, apt-get
    cli.py          the commands (up, down, status, reset, start-/stop-<service>, env)
"""
