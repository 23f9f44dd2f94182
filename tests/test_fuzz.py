"""
Fuzzing what comes from outside: payloads and INI files. Every input gives a result or an
AlligatorException, never another exception. (DSNs: tests/test_dsn_fuzz.py.)
"""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alligator.allowlist import AllowedTasks
from alligator.exceptions import AlligatorException
from alligator.tasks import Task
from supervisor.config import MAIN_KEYS, QUEUE_KEYS, ConfigError, load

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# Module names: real ones (allowed or not) and made-up ones; nothing outside tests.* is
# allowed, so no made-up name that happens to exist is ever imported.
modules = st.sampled_from(
    ["tests.tasks", "tests.hooks", "tests.nope", "tests", "os", "builtins", "tests.tasks.x"]
) | st.text(max_size=12)
task_fields = st.fixed_dictionaries(
    {},
    optional={
        "task_id": st.text(max_size=10) | json_values,
        "retries": st.integers(-2, 3) | json_values,
        "async": json_values,
        "is_async": json_values,
        "status": json_values,
        "module": modules | json_values,
        "callable": st.sampled_from(["add", "fail", "lines", "nope", "__class__", ""])
        | json_values,
        "args": json_values,
        "kwargs": json_values,
        "depends_on": json_values,
        "delay_until": json_values | st.floats(allow_nan=True, allow_infinity=True),
        "on_start": st.sampled_from(["tests.hooks.on_start", "os.system"]) | json_values,
        "on_success": json_values,
        "on_error": json_values,
    },
)
ALLOWED = AllowedTasks(["tests.*"])


def decodes_or_refuses(data) -> None:
    try:
        task = Task.deserialize(data, ALLOWED)
    except AlligatorException:
        return
    assert isinstance(task, Task) and task.func is not None


@FUZZ
@given(st.text() | st.binary().map(lambda raw: raw.decode("utf-8", "surrogateescape")))
def test_any_text_is_a_task_or_an_alligator_exception(data):
    decodes_or_refuses(data)


@FUZZ
@given(task_fields)
def test_any_json_object_is_a_task_or_an_alligator_exception(fields):
    decodes_or_refuses(json.dumps(fields))


@FUZZ
@given(st.integers(1, 5000))
def test_deep_nesting_is_refused_cleanly(depth):
    decodes_or_refuses("[" * depth + "]" * depth)
    decodes_or_refuses('{"a":' * depth + "1" + "}" * depth)


@pytest.fixture(scope="module")
def ini_path(tmp_path_factory):
    return tmp_path_factory.mktemp("ini") / "fuzz.ini"


def loads_or_refuses(path, text: str) -> None:
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        load(str(path))
    except ConfigError:
        return


@FUZZ
@given(text=st.text())
def test_any_text_is_a_config_or_a_config_error(ini_path, text):
    loads_or_refuses(ini_path, text)


ini_values = st.sampled_from(
    ["1", "0", "-1", "2.5", "nan", "inf", "1e400", "512M", "0.5K", "sqlite:///q.db", "locmem://",
     "redis:/:pw@host", "redis://h/0?lease=0", "a.b, c.*", "a.", "*", "x" * 20, "debug", "", " "]
) | st.text(max_size=30)  # fmt: skip
sections = st.sampled_from(["alligatord", "queue:a", "queue:b", "queue:", "queue: a", "other"])


@FUZZ
@given(
    st.lists(
        st.tuples(
            sections,
            st.lists(
                st.tuples(
                    st.sampled_from(MAIN_KEYS + QUEUE_KEYS) | st.text(max_size=8), ini_values
                ),
                max_size=6,
            ),
        ),
        max_size=4,
    )
)
def test_any_ini_made_of_known_parts_is_a_config_or_a_config_error(ini_path, parts):
    text = ""
    for section, keys in parts:
        text += f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in keys)
    loads_or_refuses(ini_path, text)
