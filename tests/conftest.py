import uuid

import pytest

from alligator.gator import Gator

from .alligatord_support import Daemons
from .outcome_support import args_for
from .servers import beanstalkd_server, redis_server


@pytest.fixture(scope="session")
def redis(tmp_path_factory):
    """A real redis-server on a free loopback port, for the whole session."""
    server = redis_server(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def beanstalkd(tmp_path_factory):
    """A real beanstalkd on a free loopback port, for the whole session."""
    server = beanstalkd_server(tmp_path_factory.mktemp("beanstalkd"))
    server.start()
    yield server
    server.stop()


def make_dsn(request, tmp_path):
    """
    A DSN for the backend named by ``request.param``, isolated per test.

    Returns a function of DSN query options: ``dsn(lease=1)``; its ``backend`` attribute
    names the backend.
    """
    name = request.param
    if name == "locmem":
        base = f"locmem://test-{uuid.uuid4().hex}"
    elif name == "sqlite":
        base = f"sqlite:///{tmp_path / 'queue.db'}"
    elif name == "redis":
        server = request.getfixturevalue("redis")
        base = f"redis://{server.host}:{server.port}/0?prefix=test{uuid.uuid4().hex[:12]}"
    elif name == "beanstalk":
        server = request.getfixturevalue("beanstalkd")
        base = f"beanstalk://{server.host}:{server.port}/"
    else:
        raise ValueError(name)

    def dsn(**options) -> str:
        if not options:
            return base
        query = "&".join(f"{key}={value}" for key, value in options.items())
        return f"{base}{'&' if '?' in base else '?'}{query}"

    dsn.backend = name
    return dsn


@pytest.fixture(params=["locmem", "sqlite", "redis", "beanstalk"])
def backend_dsn(request, tmp_path):
    """Every backend in turn."""
    return make_dsn(request, tmp_path)


@pytest.fixture(params=["sqlite", "redis", "beanstalk"])
def shared_backend_dsn(request, tmp_path):
    """Every backend that processes share (all but locmem)."""
    return make_dsn(request, tmp_path)


@pytest.fixture(params=["locmem", "sqlite", "redis"])
def leased_backend_dsn(request, tmp_path):
    """Every backend whose in-flight tasks are held by leases (beanstalkd holds them per
    connection instead)."""
    return make_dsn(request, tmp_path)


@pytest.fixture(params=["locmem", "sqlite", "redis"])
def keyed_backend_dsn(request, tmp_path):
    """Every backend that stores tasks under the caller's ids (beanstalkd assigns its own)."""
    return make_dsn(request, tmp_path)


@pytest.fixture
def queue_name():
    """A queue name no other test uses (beanstalkd tubes outlive a test)."""
    return f"q{uuid.uuid4().hex[:12]}"


@pytest.fixture
def gator_args(backend_dsn, queue_name, tmp_path):
    """A DSN and the other arguments of a Gator, for every backend in turn (beanstalkd with
    a result backend)."""
    return args_for(backend_dsn, queue_name, tmp_path)


@pytest.fixture
def shared_gator_args(shared_backend_dsn, queue_name, tmp_path):
    """The same, for the backends that processes share (all but locmem)."""
    return args_for(shared_backend_dsn, queue_name, tmp_path)


@pytest.fixture
def gator():
    """A Gator on a fresh in-process queue."""
    return Gator(f"locmem://test-{uuid.uuid4().hex}")


@pytest.fixture
def daemons():
    """Starts alligatord processes for one test (``daemons(config, *args)``), and kills
    them and every worker they had at its end, whatever state the test left."""
    started = Daemons()
    yield started
    started.stop_all()
