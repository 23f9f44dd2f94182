"""The DSN parsers, fuzzed with Hypothesis: whatever the text, each gives a result or an
``AlligatorException`` (``redact_dsn`` never raises at all), and a password never shows in
a masked DSN nor in an error message.

No SQLite ``Client`` is built here: it would create files wherever the text points. Its
DSN is read by ``dsn_settings``, which touches no file.
"""

import string
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alligator.backends import (
    beanstalk_backend,
    client_class,
    dsn_options,
    dsn_scheme,
    redact_dsn,
    redact_dsn_part,
    redis_backend,
    split_dsn,
    sqlite_backend,
)
from alligator.exceptions import AlligatorException, InvalidDSNError

FUZZ = settings(max_examples=300, deadline=None)

SCHEMES = ["redis", "rediss", "unix", "sqlite", "beanstalk", "locmem", "unknown"]
OPTION_KEYS = [
    "lease",
    "prefix",
    "db",
    "socket_timeout",
    "ssl_ca_certs",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "busy_timeout",
    "synchronous",
    "ttr",
]
PASSWORD_KEYS = ["password", "sentinel_password", "passwd", "pwd", "Password", "pass%77ord"]

# Passwords hold a token of 12 capital letters; nothing else in a generated DSN holds two
# capital letters in a row, nor a percent-escape that decodes to one, so the token never
# shows by chance. Lone surrogates come in as escapes of bytes and as ones that stand for
# none.
TOKEN = st.text(alphabet=string.ascii_uppercase, min_size=12, max_size=12)
ATOMS = [
    *"abcxyz0123456789:/?#[]@!$&'()*+,;=-._~ \t\n\x00",
    "://",
    "%2f",
    "%3a",
    "%40",
    "%23",
    "%3f",
    "%25",
    "%20",
    "%c3%a9",
    "%ff",
    "%zz",
    "%00",
    "\u00e9",
    "\u00b2",
    "\u2100",
    "\uff03",
    "\udcff",
    "\ud800",
]
JUNK = st.lists(
    st.one_of(
        st.sampled_from(ATOMS),
        st.characters(exclude_characters=string.ascii_uppercase + "%"),
    ),
    max_size=8,
).map("".join)
HOSTS = st.one_of(
    st.sampled_from(["localhost", "127.0.0.1", "[::1]", "[::1", "", "db.example"]), JUNK
)
PORTS = st.one_of(
    st.just(""),
    st.integers(min_value=0, max_value=99999).map(lambda port: f":{port}"),
    JUNK.map(lambda junk: f":{junk}"),
)
PATHS = st.one_of(
    st.sampled_from(
        ["", "/", "/0", "/3", "/queue.db", "//tmp/q.db", "/tmp/redis.sock", "/:memory:"]
    ),
    JUNK.map(lambda junk: f"/{junk}"),
)
VALUES = st.one_of(
    st.sampled_from(["1", "0", "-2", "2.5", "nan", "inf", "1e400", "", "full", "none", "x"]),
    st.text(alphabet="0123456789", min_size=1, max_size=5000),  # past int's digit limit
    JUNK,
)
PARAMS = st.lists(st.tuples(st.one_of(st.sampled_from(OPTION_KEYS), JUNK), VALUES), max_size=3)


@st.composite
def dsns_with_a_password(draw) -> tuple[str, str]:
    """A DSN-like text whose password (in the user information, in a password-like query
    parameter, or both) holds a token; returns the text and the token."""
    token = draw(TOKEN)
    scheme = draw(st.sampled_from(SCHEMES))
    separator = draw(st.sampled_from(["://", "://", "://", ":/", ":", ":///", ""]))
    secret = draw(JUNK) + token + draw(JUNK)
    where = draw(st.sampled_from(["userinfo", "query", "both"]))
    userinfo = ""
    if where in ("userinfo", "both"):
        userinfo = f"{draw(JUNK)}:{secret}@"
    params = draw(PARAMS)
    if where in ("query", "both"):
        key = draw(st.sampled_from(PASSWORD_KEYS))
        at = draw(st.integers(min_value=0, max_value=len(params)))
        params.insert(at, (key, quote(secret, safe="", errors="surrogatepass")))
    query = "&".join(f"{key}={value}" for key, value in params)
    dsn = f"{scheme}{separator}{userinfo}{draw(HOSTS)}{draw(PORTS)}{draw(PATHS)}"
    return dsn + (f"?{query}" if query else ""), token


@st.composite
def dsn_like(draw) -> str:
    """Structured DSNs, with or without a password."""
    scheme = draw(st.sampled_from(SCHEMES))
    userinfo = draw(st.sampled_from(["", "user@", "user:pw@", ":pw@"]))
    query = "&".join(f"{key}={value}" for key, value in draw(PARAMS))
    dsn = f"{scheme}://{userinfo}{draw(HOSTS)}{draw(PORTS)}{draw(PATHS)}"
    return dsn + (f"?{query}" if query else "")


ANY_TEXT = st.one_of(
    st.text(),
    st.lists(st.sampled_from(ATOMS), max_size=30).map("".join),
    dsn_like(),
    dsns_with_a_password().map(lambda made: made[0]),
)


def messages(exc: BaseException) -> list[str]:
    """The messages a traceback of ``exc`` would show: its own and its causes'."""
    shown = []
    while exc is not None:
        shown.append(str(exc))
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return shown


def parse_everywhere(dsn: str) -> list[str]:
    """
    Runs every DSN parser on ``dsn``; returns the texts they would show (error messages,
    masked DSNs and places). Any exception that is not an ``AlligatorException`` fails.
    """
    shown = [redact_dsn(dsn)]
    attempts = [
        lambda: dsn_scheme(dsn),
        lambda: client_class(dsn),
        lambda: dsn_options(dsn, {"lease": 60.0, "prefix": "alligator"}),
        lambda: split_dsn(dsn),
        lambda: sqlite_backend.database_path(dsn),
        lambda: sqlite_backend.dsn_settings(dsn),
    ]
    for attempt in attempts:
        try:
            attempt()
        except AlligatorException as exc:
            shown += messages(exc)
    for client_type in (redis_backend.Client, beanstalk_backend.Client):
        try:
            client = client_type(dsn)  # no I/O until first used
        except AlligatorException as exc:
            shown += messages(exc)
        else:
            shown.append(getattr(client, "where", None) or client.address)
            client.close()
    try:
        chosen = client_class(dsn)
    except InvalidDSNError:
        chosen = None
    if chosen is not None and chosen is not sqlite_backend.Client:
        try:
            chosen(dsn).close()
        except AlligatorException as exc:
            shown += messages(exc)
    return shown


@FUZZ
@given(ANY_TEXT)
def test_parsers_give_a_result_or_an_alligator_exception(dsn):
    shown = parse_everywhere(dsn)
    assert all(isinstance(text, str) for text in shown)


@FUZZ
@given(ANY_TEXT, st.one_of(st.text(), st.sampled_from(["", "localhost", "6379", "0"])))
def test_redacting_never_raises(dsn, part):
    assert isinstance(redact_dsn(dsn), str)
    assert isinstance(redact_dsn_part(dsn, part), str)


@FUZZ
@given(dsns_with_a_password())
def test_a_password_never_shows(made):
    dsn, token = made
    assert token in dsn
    for text in parse_everywhere(dsn):
        assert token not in text, f"{token} shows in {text!r} for DSN {dsn!r}"


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("redis://app:secret@db:6379/0", "redis://app:***@db:6379/0"),
        ("redis://:secret@db/0", "redis://:***@db/0"),
        ("redis://app@db/0", "redis://app@db/0"),
        ("redis://app:se@cr@et@db/0", "redis://app:***@db/0"),
        ("redis://app:se/cr?et@db/0", "redis://app:***@db/0"),
        ("redis:/:secret@db", "redis:***@db"),
        ("redis:secret@db", "redis:***@db"),
        ("app:secret@db", "app:***@db"),
        ("secret@db", "***@db"),
        ("redis://db/0?password=secret&lease=5", "redis://db/0?password=***&lease=5"),
        ("redis://db/0?sentinel_password=secret", "redis://db/0?sentinel_password=***"),
        ("redis://db/0?pass%77ord=secret", "redis://db/0?pass%77ord=***"),
        ("sqlite:////var/lib/app/queue.db", "sqlite:////var/lib/app/queue.db"),
        ("", ""),
    ],
)
def test_redact_dsn(dsn, shown):
    assert redact_dsn(dsn) == shown


@pytest.mark.parametrize(
    "dsn",
    [
        "redis://app:se/cret@127.0.0.1:6379/0",  # the parser takes "cret@…" for the path
        "redis://app:se?cret@127.0.0.1:6379/0",
        "redis://app:4711/cret@127.0.0.1/0",  # … and the password's start for the port
        "redis://app:se/cret@127.0.0.1/0?lease=soon",
        "redis://127.0.0.1/0?password=secret&lease=soon",
        "redis:/:secret://@localhost",
        "beanstalk://app:4711#x@127.0.0.1/",
        "beanstalk://app:secret@127.0.0.1:port/",
        "sqlite://app:secret@host/queue.db",
        "sqlite:///queue.db?synchronous=x&password=secret",
        "sqlite:///queue.db?synchronous=x?password=secret",
        "unknown:secret@host://x",
    ],
)
def test_malformed_dsns_keep_their_password_out_of_messages(dsn):
    for text in parse_everywhere(dsn):
        assert "secret" not in text and "cret" not in text and "4711" not in text, text
