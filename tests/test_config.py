from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.routes import path_as_route
from wstrace.config import Config, ExcludedUrls, RouteTemplates, carry_link
from wstrace.envelope import DEFAULT_JSON_FIELD, DEFAULT_MAX_HEADER_BYTES
from wstrace.exceptions import ConfigError, WstraceError


# (option, environment text, parsed value): every value differs from the default.
SETTINGS: list[tuple[str, str, Any]] = [
    ("model", "connection", "connection"),
    ("envelope", "always", "always"),
    ("envelope_format", "json", "json"),
    ("json_field", "_trace", "_trace"),
    ("max_envelope_bytes", "1024", 1024),
    ("trust", "link", "link"),
    ("handshake_sources", "query,subprotocol", ("query", "subprotocol")),
    ("message_spans", "false", False),
    ("metrics", "no", False),
    ("streams", "off", False),
    ("chunk_spans", "yes", True),
    ("stream_idle", "0.25", 0.25),
    ("run_limit", "0", 0.0),
    ("excluded_urls", "/health, ^ws://internal", ExcludedUrls(("/health", "^ws://internal"))),
    ("request_hook", "builtins:print", print),
    ("response_hook", "builtins:print", print),
    ("message_hook", "builtins:print", print),
    ("capture_request_headers", "Host, X-Request-.*", ("host", "x-request-.*")),
    ("capture_response_headers", "upgrade", ("upgrade",)),
    ("sanitize_headers", "authorization", ("authorization",)),
    ("stall_threshold", "2", 2.0),
    ("stream_end", "builtins:bool", bool),
    ("stream_key", "builtins:len", len),
    ("capture_payload", "on", True),
    ("capture_payload_bytes", "64", 64),
    ("redact", "builtins:repr", repr),
    ("routes", "/chat/{id}, /rooms/{room}/ws", RouteTemplates(("/chat/{id}", "/rooms/{room}/ws"))),
]

# (option, a value neither the environment nor a keyword may use). json_field has none:
# its only bad value is the empty string, which in the environment means "unset".
BAD_VALUES: list[tuple[str, Any]] = [
    ("model", "trace"),
    ("envelope", "sometimes"),
    ("envelope_format", "xml"),
    ("max_envelope_bytes", "lots"),
    ("max_envelope_bytes", "65536"),
    ("max_envelope_bytes", "-1"),
    ("trust", "everyone"),
    ("handshake_sources", "headers,cookies"),
    ("message_spans", "maybe"),
    ("metrics", "perhaps"),
    ("streams", "maybe"),
    ("chunk_spans", "sometimes"),
    ("stream_idle", "soon"),
    ("stream_idle", "-1"),
    ("run_limit", "forever"),
    ("excluded_urls", "(unclosed"),
    ("request_hook", "builtins:nothing_here"),
    ("response_hook", "not a path"),
    ("message_hook", "builtins:__doc__"),
    ("capture_request_headers", "x-(open"),
    ("capture_response_headers", "[bad"),
    ("sanitize_headers", "*"),
    ("stall_threshold", "nan"),
    ("stream_end", "no_such_module_here:f"),
    ("stream_key", "builtins:no_such_function"),
    ("stream_key", "not a path"),
    ("capture_payload", "sometimes"),
    ("capture_payload_bytes", "0"),
    ("capture_payload_bytes", "65537"),
    ("capture_payload_bytes", "many"),
    ("redact", "no_such_module_here:redact"),
    ("redact", ":fn"),  # once a ValueError from importlib, not a ConfigError
    ("stream_end", ".rel:fn"),  # once a TypeError (a relative import with no package)
    ("stream_key", "builtins:"),
    ("stream_end", "builtins:__doc__"),  # not callable
    ("redact", "tests.peers.broken_module:f"),  # the module raises RuntimeError on import
    ("routes", "chat/{id}"),  # a template must start with "/"
    ("routes", "no_such_module_here:route"),
]

CHOICES = ["model", "envelope", "envelope_format", "trust"]
"""The options that take one of a set of words (with carry_link, which Config does not hold)."""

ROOT = Path(__file__).resolve().parent.parent

# Every variable Config.load reads, plus WSTRACE_CARRY_LINK (read by the queue helpers through
# wstrace.config), with bad values: each must be logged exactly once on wstrace.config and ignored.
BAD_ENVIRONMENT: list[tuple[str, str]] = [
    *((env_name, bad) for env_name, bad in ((f"WSTRACE_{o.upper()}", b) for o, b in BAD_VALUES)),
    ("WSTRACE_CARRY_LINK", "sideways"),
    ("WSTRACE_CARRY_LINK", "child"),
]


def env_name(option: str) -> str:
    """The environment variable that sets ``option``."""
    return f"WSTRACE_{option.upper()}"


def test_defaults() -> None:
    """With no environment and no keyword every option has its documented default."""
    config = Config.load(environ={})
    assert config == Config()
    assert config.model == "message"
    assert config.envelope == "negotiate"
    assert config.envelope_format == "frame"
    assert config.json_field == DEFAULT_JSON_FIELD == "_wstrace"
    assert config.max_envelope_bytes == DEFAULT_MAX_HEADER_BYTES == 8192
    assert config.trust == "parent"
    assert config.handshake_sources == ("headers",)
    assert config.message_spans is True
    assert config.capture_payload is False, "payloads are application data: never recorded by default"
    assert config.capture_payload_bytes == 256
    assert config.redact is None


def test_the_table_covers_every_option() -> None:
    """The parametrised cases below name every Config field, so a new option cannot go untested."""
    assert {name for name, _, _ in SETTINGS} == {f.name for f in dataclasses.fields(Config)}


@pytest.mark.parametrize(("option", "text", "expected"), SETTINGS)
def test_option_from_environment(option: str, text: str, expected: Any) -> None:
    """Each option is read from its WSTRACE_<NAME> variable."""
    config = Config.load(environ={env_name(option): text})
    assert getattr(config, option) == expected
    assert getattr(config, option) != getattr(Config(), option)


@pytest.mark.parametrize(("option", "text", "expected"), SETTINGS)
def test_option_from_keyword(option: str, text: str, expected: Any) -> None:
    """Each option is set by its keyword, given either the parsed value or the environment text."""
    assert getattr(Config.load(environ={}, **{option: expected}), option) == expected
    assert getattr(Config.load(environ={}, **{option: text}), option) == expected


def test_real_os_environ_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without environ=, load() reads os.environ."""
    monkeypatch.setenv("WSTRACE_MODEL", "connection")
    monkeypatch.setenv("WSTRACE_TRUST", "ignore")
    monkeypatch.setenv("WSTRACE_MAX_ENVELOPE_BYTES", "512")
    config = Config.load()
    assert (config.model, config.trust, config.max_envelope_bytes) == ("connection", "ignore", 512)


def test_explicit_environ_replaces_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit environ mapping is used instead of os.environ, not merged with it."""
    monkeypatch.setenv("WSTRACE_MODEL", "connection")
    assert Config.load(environ={}).model == "message"


@pytest.mark.parametrize(("option", "text", "expected"), SETTINGS)
def test_keyword_beats_environment(option: str, text: str, expected: Any) -> None:
    """A keyword wins over the environment variable of the same option."""
    default = getattr(Config(), option)
    # None means "unset" for a keyword, so options defaulting to None are overridden by another value.
    override: Any = default if default is not None else (lambda payload: None)
    if option.endswith("_headers"):  # names, not a callable
        override = ("x-from-keyword",)
    config = Config.load(environ={env_name(option): text}, **{option: override})
    assert getattr(config, option) == override


def test_keyword_and_environment_combine() -> None:
    """Options from the environment and from keywords are merged."""
    config = Config.load(environ={"WSTRACE_MODEL": "connection", "WSTRACE_TRUST": "link"}, trust="ignore")
    assert config.model == "connection"
    assert config.trust == "ignore"


def test_none_keyword_means_unset() -> None:
    """A None keyword leaves the environment value (or the default) in place."""
    config = Config.load(environ={"WSTRACE_MODEL": "connection"}, model=None, trust=None)
    assert config.model == "connection"
    assert config.trust == "parent"


@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_environment_value_means_unset(blank: str) -> None:
    """An empty or whitespace-only variable is treated as unset, silently."""
    assert Config.load(environ={"WSTRACE_MODEL": blank, "WSTRACE_MESSAGE_SPANS": blank}) == Config()


def test_environment_values_are_case_and_space_insensitive() -> None:
    """Choice values from the environment are stripped and lowercased."""
    config = Config.load(environ={"WSTRACE_MODEL": "  Connection ", "WSTRACE_ENVELOPE": "OFF"})
    assert config.model == "connection"
    assert config.envelope == "off"


# In a fresh process: warnings are once per process, so this test must not see what others logged.
_PROBE = """
import json, logging, sys
from wstrace.config import Config, carry_link

class Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []
    def emit(self, record):
        self.records.append({"logger": record.name, "level": record.levelname, "message": record.getMessage()})

keep = Keep()
logging.getLogger("wstrace").addHandler(keep)
results = []
for variable, bad in json.loads(sys.argv[1]):
    keep.records.clear()
    outcome = {"raised": None, "default": True}
    try:
        for _ in range(3):  # as when several instrumentors load their config
            if variable == "WSTRACE_CARRY_LINK":
                outcome["default"] &= carry_link(environ={variable: bad}) == "parent"
            else:
                outcome["default"] &= Config.load(environ={variable: bad}) == Config()
    except Exception as exc:
        outcome["raised"] = f"{type(exc).__name__}: {exc}"
    results.append({**outcome, "records": list(keep.records)})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def bad_environment_outcomes() -> dict[tuple[str, str], dict[str, Any]]:
    """What each bad value in BAD_ENVIRONMENT did, in one fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSTRACE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(BAD_ENVIRONMENT)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    return dict(zip(BAD_ENVIRONMENT, json.loads(done.stdout.splitlines()[-1]), strict=True))


def test_bad_environment_cases_cover_every_variable() -> None:
    """Every variable Config.load reads has a bad-value case, except json_field, which takes any
    non-blank text (blank means unset); WSTRACE_CARRY_LINK is covered too."""
    read = {env_name(f.name) for f in dataclasses.fields(Config)}
    assert {variable for variable, _ in BAD_ENVIRONMENT} == read - {"WSTRACE_JSON_FIELD"} | {"WSTRACE_CARRY_LINK"}


@pytest.mark.parametrize(("variable", "bad"), BAD_ENVIRONMENT)
def test_bad_environment_value_is_logged_once_and_ignored(
    variable: str, bad: str, bad_environment_outcomes: dict[tuple[str, str], dict[str, Any]]
) -> None:
    """A bad value never raises, is logged once (not once per load) on wstrace.config, naming the
    variable, the value and the default used instead, and the default stays."""
    outcome = bad_environment_outcomes[(variable, bad)]
    assert outcome["raised"] is None
    assert outcome["default"] is True
    assert len(outcome["records"]) == 1, outcome["records"]
    record = outcome["records"][0]
    assert (record["logger"], record["level"]) == ("wstrace.config", "WARNING")
    assert f"{variable}={bad!r}" in record["message"]
    assert "using the default" in record["message"]


def test_bad_environment_value_does_not_spoil_the_others(caplog: pytest.LogCaptureFixture) -> None:
    """One bad variable is skipped while the good ones still apply."""
    bad = f"nonsense-{uuid.uuid4().hex}"  # warnings are once per process: a value never logged before
    with caplog.at_level(logging.WARNING, logger="wstrace.config"):
        config = Config.load(environ={"WSTRACE_MODEL": bad, "WSTRACE_TRUST": "link"})
    assert config.model == "message"
    assert config.trust == "link"
    assert "WSTRACE_MODEL" in caplog.text


def test_bad_environment_value_overridden_by_keyword() -> None:
    """A valid keyword still applies when the environment value for it is bad."""
    config = Config.load(environ={"WSTRACE_MODEL": "nonsense"}, model="connection")
    assert config.model == "connection"


@pytest.mark.parametrize(("option", "bad"), BAD_VALUES)
def test_bad_keyword_raises_config_error(option: str, bad: str) -> None:
    """A bad keyword value raises ConfigError, which is a ValueError and a WstraceError."""
    with pytest.raises(ConfigError) as info:
        Config.load(environ={}, **{option: bad})
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, WstraceError)
    assert str(info.value).startswith(f"{option}: "), "the message names the option"


def test_config_error_message() -> None:
    """The message names the option, what it takes and what it got."""
    with pytest.raises(ConfigError) as info:
        Config.load(environ={}, model="bogus")
    assert str(info.value) == "model: expected one of message, connection, got 'bogus'"
    with pytest.raises(ConfigError) as info:
        carry_link("child")
    assert str(info.value) == "carry_link: expected one of parent, link, got 'child'"


@pytest.mark.parametrize("option", CHOICES)
@pytest.mark.parametrize("dress", [str.upper, str.title, lambda v: f"  {v}\t"])
def test_choices_are_case_and_blank_tolerant(option: str, dress: Any) -> None:
    """Every choice option takes any case and surrounding blanks, by keyword and by variable."""
    value = {"model": "connection", "envelope": "always", "envelope_format": "json", "trust": "link"}[option]
    assert getattr(Config.load(environ={}, **{option: dress(value)}), option) == value
    assert getattr(Config.load(environ={env_name(option): dress(value)}), option) == value


@pytest.mark.parametrize("text", ["LINK", " link ", "Link\t", "link"])
def test_carry_link_is_case_and_blank_tolerant(text: str) -> None:
    """carry_link, a choice of the queue helpers, is parsed like the others, by keyword and by variable."""
    assert carry_link(text, environ={}) == "link"
    assert carry_link(None, environ={"WSTRACE_CARRY_LINK": text}) == "link"
    assert carry_link(None, environ={}) == "parent"
    assert carry_link("parent", environ={"WSTRACE_CARRY_LINK": "link"}) == "parent", "a keyword wins"


@pytest.mark.parametrize(
    ("option", "bad"),
    [
        ("model", 3),
        ("json_field", ""),
        ("json_field", 7),
        ("max_envelope_bytes", 65536),
        ("max_envelope_bytes", -1),
        ("max_envelope_bytes", 1.5),
        ("max_envelope_bytes", True),
        ("handshake_sources", 5),
        ("handshake_sources", ["headers", 1]),
        ("handshake_sources", ("headers", "body")),
        ("message_spans", 1),
        ("message_spans", "sometimes"),
        ("capture_payload", 1),
        ("capture_payload_bytes", 1.5),
        ("capture_payload_bytes", True),
        ("redact", 42),
    ],
)
def test_keyword_of_wrong_type_raises_config_error(option: str, bad: Any) -> None:
    """A keyword of the wrong type raises ConfigError too, never TypeError or AttributeError."""
    with pytest.raises(ConfigError):
        Config.load(environ={}, **{option: bad})


def test_config_error_is_catchable_as_value_error() -> None:
    """Callers may catch a bad option as a plain ValueError."""
    with pytest.raises(ValueError, match="message, connection"):
        Config.load(environ={}, model="trace")


def test_unknown_keyword_raises() -> None:
    """An unknown keyword raises ConfigError naming it."""
    with pytest.raises(ConfigError, match="modle"):
        Config.load(environ={}, modle="connection")


def test_unknown_environment_variable_is_ignored() -> None:
    """A WSTRACE_ variable that names no option is ignored."""
    assert Config.load(environ={"WSTRACE_MODLE": "connection"}) == Config()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("headers", ("headers",)),
        ("query, subprotocol", ("query", "subprotocol")),
        (" Subprotocol ,HEADERS , query ", ("subprotocol", "headers", "query")),
        ("query,Query,headers,query", ("query", "headers")),
        ("headers,,  ,query,", ("headers", "query")),
    ],
)
def test_handshake_sources_from_comma_list(text: str, expected: tuple[str, ...]) -> None:
    """A comma list is split, stripped, lowercased and de-duplicated, keeping the first order."""
    assert Config.load(environ={"WSTRACE_HANDSHAKE_SOURCES": text}).handshake_sources == expected
    assert Config.load(environ={}, handshake_sources=text).handshake_sources == expected


def test_handshake_sources_from_sequence() -> None:
    """A keyword list or tuple is normalised the same way and stored as a tuple."""
    config = Config.load(environ={}, handshake_sources=["Query", "headers", "query"])
    assert config.handshake_sources == ("query", "headers")
    assert isinstance(config.handshake_sources, tuple)


def test_handshake_sources_bad_entry_names_it(caplog: pytest.LogCaptureFixture) -> None:
    """An unknown source is rejected as a whole, and the warning names it."""
    cookie = f"cookie{uuid.uuid4().hex}"  # warnings are once per process: a value never logged before
    with caplog.at_level(logging.WARNING, logger="wstrace.config"):
        config = Config.load(environ={"WSTRACE_HANDSHAKE_SOURCES": f"query,{cookie}"})
    assert config.handshake_sources == ("headers",)
    assert cookie in caplog.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_message_spans_booleans(text: str, expected: bool) -> None:
    """message_spans accepts 1/true/yes/on and 0/false/no/off in any case."""
    assert Config.load(environ={"WSTRACE_MESSAGE_SPANS": text}).message_spans is expected
    assert Config.load(environ={}, message_spans=text).message_spans is expected


def test_message_spans_keyword_bool() -> None:
    """message_spans takes a real bool as a keyword."""
    assert Config.load(environ={"WSTRACE_MESSAGE_SPANS": "off"}, message_spans=True).message_spans is True
    assert Config.load(environ={}, message_spans=False).message_spans is False


@pytest.mark.parametrize("size", [0, 1, 8192, 65535])
def test_max_envelope_bytes_bounds_accepted(size: int) -> None:
    """max_envelope_bytes accepts 0 to 65535 inclusive, as text or int."""
    assert Config.load(environ={"WSTRACE_MAX_ENVELOPE_BYTES": str(size)}).max_envelope_bytes == size
    assert Config.load(environ={}, max_envelope_bytes=size).max_envelope_bytes == size


@pytest.mark.parametrize("size", [-1, 65536, 1 << 20])
def test_max_envelope_bytes_bounds_rejected(size: int) -> None:
    """Sizes outside 0..65535 raise as keywords and fall back to the default from the environment
    (the warning: test_bad_environment_value_is_logged_once_and_ignored)."""
    with pytest.raises(ConfigError, match="65535"):
        Config.load(environ={}, max_envelope_bytes=size)
    config = Config.load(environ={"WSTRACE_MAX_ENVELOPE_BYTES": str(size)})
    assert config.max_envelope_bytes == DEFAULT_MAX_HEADER_BYTES


def test_config_is_frozen() -> None:
    """A Config cannot be changed after it is built."""
    config = Config.load(environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model = "connection"  # type: ignore[misc]
    assert config.model == "message"


def test_config_is_hashable_and_comparable() -> None:
    """Two loads with the same inputs give equal, hashable configs."""
    first = Config.load(environ={"WSTRACE_HANDSHAKE_SOURCES": "query"})
    second = Config.load(environ={}, handshake_sources=("query",))
    assert first == second
    assert hash(first) == hash(second)


def test_route_templates_match_one_segment_per_name() -> None:
    """Each ``{name}`` is one path segment; the first template that matches wins; a trailing slash is optional."""
    routes = Config.load({}, routes=["/chat/{id}", "/chat/{id}/{part}", "/"]).routes
    assert routes is not None
    assert [routes(p) for p in ("/chat/42", "/chat/42/", "/chat/42/audio", "/chat", "/", "/other")] == [
        "/chat/{id}",
        "/chat/{id}",
        "/chat/{id}/{part}",
        None,
        "/",
        None,
    ]


def test_routes_may_be_a_callable_by_keyword_or_by_name() -> None:
    assert Config.load({}, routes=str.upper).routes is str.upper
    assert Config.load({"WSTRACE_ROUTES": "tests.routes:path_as_route"}).routes is path_as_route


def test_header_options_fall_back_to_opentelemetrys_variables() -> None:
    prefix = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_"
    env = {
        prefix + "SERVER_REQUEST": "X-Forwarded-For",
        prefix + "SERVER_RESPONSE": "upgrade",
        prefix + "CLIENT_RESPONSE": "sec-websocket-protocol",
        prefix + "SANITIZE_FIELDS": "set-cookie",
    }
    config = Config.load(env)
    assert config.capture_request_headers == ("x-forwarded-for",)
    assert config.capture_response_headers == ("upgrade", "sec-websocket-protocol")
    assert config.sanitize_headers == ("set-cookie",)
    ours = Config.load({**env, "WSTRACE_CAPTURE_REQUEST_HEADERS": "host"})
    assert ours.capture_request_headers == ("host",)
