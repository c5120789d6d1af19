"""The one interface every service of the stack implements, and the steps all of them share.

A service is one server run as a plain, detached process with its state under the stack folder. The
commands (cli.py) use only what is defined here: ``start``, ``stop``, ``status``, ``describe``,
``address`` and ``wipe``. A service module supplies the rest: how to find its process, whether it
answers, how to launch it and how to stop it.
"""

from __future__ import annotations

import abc
from typing import ClassVar, NamedTuple

from .common import HOST, die, log
from .ports import ensure_port_free


class Port(NamedTuple):
    """A port a service listens on, what for, and the variable that chooses it."""

    number: int
    what: str
    env_var: str


class Service(abc.ABC):
    name: ClassVar[str]  # on the command line: --only NAME, start-NAME, stop-NAME
    label: ClassVar[str]  # first column of the status lines
    title: ClassVar[str]  # in messages
    env_var: ClassVar[str]  # the `env` command prints ENV_VAR=address()
    no_answer: ClassVar[str]  # status line of a process that is alive but does not answer

    port: int  # the configured client port (the running one may differ: running_port())

    # -- what each service supplies -------------------------------------------------------------
    @abc.abstractmethod
    def ports(self) -> list[Port]:
        """Every port a start needs free."""

    @abc.abstractmethod
    def pid(self) -> int | None:
        """The main process of this stack's service when it is alive, else None."""

    @abc.abstractmethod
    def running_port(self) -> int:
        """The client port the running (or last started) process listens on; else the configured one."""

    @abc.abstractmethod
    def healthy(self) -> bool:
        """Whether the service answers a real request (not just an open port)."""

    @abc.abstractmethod
    def address(self) -> str:
        """What a client connects to (Kafka: the bootstrap address; PostgreSQL: the DSN)."""

    @abc.abstractmethod
    def summary(self) -> str:
        """Address and version, as printed after `up` and in the `status` line of a running service."""

    @abc.abstractmethod
    def launch(self) -> None:
        """Start the process when none runs (checking ports first) and wait until it answers."""

    @abc.abstractmethod
    def wait_ready(self, pid: int) -> None:
        """Wait until the process answers; a clear error when it dies or does not answer in time."""

    def provision(self) -> None:  # noqa: B027 (optional hook)
        """What clients expect besides the running server (idempotent); nothing by default."""

    @abc.abstractmethod
    def stop(self, kill: bool = False) -> None:
        """Stop the service (kill: SIGKILL, a crash simulation); safe when nothing runs."""

    @abc.abstractmethod
    def wipe(self) -> None:
        """Delete the service's data (the service is stopped)."""

    # -- shared ------------------------------------------------------------------------------
    def start(self) -> None:
        """Idempotent: a running, answering service is left alone; one on another port is an error."""
        pid = self.pid()
        if pid is None:
            self.launch()
        else:
            rport = self.running_port()
            if rport != self.port:
                die(
                    f"this stack's {self.title} is already running on port {rport}, not {self.port}; "
                    f"run 'python3 compose/local/stack.py stop-{self.name}' first"
                )
            if not self.healthy():
                log(f"{self.title} pid {pid} is running but not answering yet; waiting ...")
                self.wait_ready(pid)
        self.provision()

    def check_ports_free(self) -> None:
        for port in self.ports():
            ensure_port_free(port.number, port.what, port.env_var)

    def status(self) -> tuple[bool, str]:
        """(running and answering, the status line)."""
        pid = self.pid()
        if not pid:
            return False, f"{self.label:<10} stopped   {self.stopped_address()}"
        if self.healthy():
            return True, f"{self.label:<10} running   pid {pid:<7} {self.summary()}"
        return (
            False,
            f"{self.label:<10} NOT READY pid {pid:<7} {HOST}:{self.running_port()} "
            f"(process alive, {self.no_answer})",
        )

    def stopped_address(self) -> str:
        return f"{HOST}:{self.port}"

    def describe(self) -> str:
        return f"{self.label:<10} {self.summary()}"
