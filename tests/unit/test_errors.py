"""Every error class in tracker/errors.py, and the one table that says what an
error means to the ``tracker`` command (exit code) and to the HTTP API (status).

The CLI's ``main`` and the API's error middleware are both driven here with
every error class, so neither can map an error on its own.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

import projections
import tracker
import tracker.cli
from tracker import errors
from tracker.api.app import errors_middleware
from tracker.errors import (
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    TrackerError,
    exit_code,
    http_status,
)

EXIT_CODES = {EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_FOUND}
HTTP_STATUSES = {400, 404, 500, 503}

# What each error meant before the table existed (tracker/cli.py's `main` and
# tracker/api/app.py's middleware, each with its own except clauses): kept.
EXPECTED = {
    "TrackerError": (1, 500),
    "ConfigError": (2, 500),  # read at start-up: "tracker: configuration error: ..."
    "UsageError": (2, 400),
    "InvalidQuery": (2, 400),
    "NotFound": (3, 404),
    "DatabaseUnavailable": (1, 503),
    "StorageError": (1, 500),
    "MigrationError": (1, 500),
    "BrokerError": (1, 500),
    "PublishError": (1, 500),
    "IllegalTransition": (1, 500),
    "DecodeError": (1, 500),
    "FramingError": (1, 500),
    "UnknownSchemaError": (1, 500),
    "BodyError": (1, 500),
    "ValidationError": (1, 500),
    "EncodeError": (1, 500),
    "ReplayError": (1, 500),
    "CheckpointConflict": (1, 500),
    "GenerationChanged": (1, 500),
}

# Exceptions that are signals between the parts of one process, not errors a
# caller sees, and still live next to the code that raises them.
NOT_YET_IN_ERRORS: set[str] = set()


def _subclasses(cls: type[BaseException]) -> Iterator[type[BaseException]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _project_classes(base: type[BaseException]) -> list[type[BaseException]]:
    return sorted(
        {c for c in _subclasses(base) if c.__module__.startswith(("tracker", "projections"))},
        key=lambda c: c.__name__,
    )


def _instance(cls: type[BaseException], message: str = "boom") -> BaseException:
    """An instance whatever the class's own constructor wants."""
    exc = cls.__new__(cls)
    BaseException.__init__(exc, message)
    return exc


def _import_everything() -> None:
    for package in (tracker, projections):
        for mod in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not mod.name.endswith("__main__"):
                importlib.import_module(mod.name)


def test_every_error_class_is_defined_in_tracker_errors() -> None:
    _import_everything()
    elsewhere = [
        f"{c.__module__}.{c.__qualname__}"
        for c in _project_classes(Exception)
        if c.__module__ != "tracker.errors"
    ]
    assert set(elsewhere) <= NOT_YET_IN_ERRORS, elsewhere


def test_every_tracker_error_maps_to_a_defined_exit_code_and_status() -> None:
    classes = [TrackerError, *_project_classes(TrackerError)]
    assert {c.__name__ for c in classes} == set(EXPECTED), "a new error class: add it to EXPECTED"
    for cls in classes:
        exc = _instance(cls)
        assert (exit_code(exc), http_status(exc)) == EXPECTED[cls.__name__], cls.__name__
        assert exit_code(exc) in EXIT_CODES and http_status(exc) in HTTP_STATUSES, cls.__name__


@pytest.mark.parametrize("cls", [TrackerError, *_project_classes(TrackerError)], ids=lambda c: c.__name__)
def test_the_cli_and_the_api_agree(cls: type[TrackerError]) -> None:
    exc = _instance(cls)
    status, code = http_status(exc), exit_code(exc)
    # A client's mistake is a usage error; "not found" is the same on both; a
    # server-side failure (5xx) is an operational one, except a bad setting,
    # which the person running the command is the one to fix.
    assert (status == 400) <= (code == EXIT_USAGE)
    assert (status == 404) == (code == EXIT_NOT_FOUND)
    assert (status >= 500) == (code == EXIT_FAILURE or cls is errors.ConfigError)


def test_other_exceptions_are_failures() -> None:
    for exc in (ValueError("x"), RuntimeError("y"), errors.Interrupted()):
        assert (exit_code(exc), http_status(exc)) == (EXIT_FAILURE, 500)


@pytest.fixture
def cli_raising(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("TRACKER_LOG_LEVEL", "TRACKER_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("tracker.logs.setup_logging", lambda *a, **k: None)
    return monkeypatch


def _run_cli_raising(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> int:
    async def command(settings: object, args: object) -> int:
        raise exc

    monkeypatch.setitem(tracker.cli.COMMANDS, "config", command)
    return tracker.cli.main(["config"])


@pytest.mark.parametrize(
    "cls", [TrackerError, *_project_classes(TrackerError), ValueError], ids=lambda c: c.__name__
)
def test_cli_exits_with_the_mapped_code(cls: type[Exception], cli_raising: pytest.MonkeyPatch) -> None:
    exc = _instance(cls)
    assert _run_cli_raising(cli_raising, exc) == exit_code(exc)


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (errors.UsageError("bad"), "tracker: error: bad\n"),
        (errors.InvalidQuery("bad"), "tracker: error: bad\n"),
        (errors.NotFound("frame 'x' not found"), "tracker: frame 'x' not found\n"),
        (errors.MigrationError("m"), "tracker: error: m\n"),
        (
            KeyError("k"),
            "tracker: error: unexpected KeyError: 'k' (TRACKER_LOG_LEVEL=DEBUG shows the traceback)\n",
        ),
    ],
)
def test_cli_prints_one_line(
    exc: Exception, line: str, cli_raising: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _run_cli_raising(cli_raising, exc)
    out = capsys.readouterr()
    assert (out.out, out.err) == ("", line)


@pytest.mark.parametrize(
    "cls", [TrackerError, *_project_classes(TrackerError), ValueError], ids=lambda c: c.__name__
)
async def test_api_answers_with_the_mapped_status(cls: type[Exception]) -> None:
    exc = _instance(cls)

    async def handler(request: web.Request) -> web.StreamResponse:
        raise exc

    response = await errors_middleware(make_mocked_request("GET", "/api/v1/failures"), handler)
    assert response.status == http_status(exc)
    assert isinstance(response, web.Response) and response.text is not None
    if response.status < 500:
        assert response.text == '{"error": "boom"}'
    else:
        assert "boom" not in response.text  # nothing internal reaches the client
