"""Only the tasks you allow run: the allowlist, checked before any import, for tasks and hooks."""

import json
import sys
import uuid

import pytest

from alligator import Gator
from alligator.allowlist import AllowedTasks
from alligator.exceptions import AlligatorException, TaskNotAllowed
from alligator.tasks import Task
from alligator.workers import Worker

from . import tasks


def payload(module, func, *args, **fields):
    data = {"task_id": uuid.uuid4().hex, "retries": 0, "async": True, "module": module}
    data.update(callable=func, args=list(args), kwargs={}, **fields)
    return json.dumps(data)


@pytest.mark.parametrize(
    "path",
    [
        "os.system",
        "subprocess.check_call",
        "builtins.eval",
        "shutil.rmtree",
        "os.path.join",
        "_posixsubprocess.fork_exec",
        "alligator.utils.resolve_path",
        "supervisor.quickstart.greet",
        "__main__.anything",
        "psutil.Popen",
        "pip._internal.utils.subprocess.call_subprocess",
        "setuptools.sandbox.run_setup",
        "redis.Redis",
    ],
)
def test_without_a_list_the_standard_library_builtins_and_alligator_are_refused(path):
    with pytest.raises(TaskNotAllowed, match="not allowed"):
        AllowedTasks().check(path)


def test_without_a_list_anything_else_is_allowed():
    AllowedTasks().check("tests.tasks.add")
    AllowedTasks().check("myapp.tasks.send")


def test_a_list_allows_its_modules_and_the_modules_below_its_packages():
    allowed = AllowedTasks(["tests.tasks", "myapp.billing.*"])
    allowed.check("tests.tasks.add")
    allowed.check("myapp.billing.invoices.send")
    allowed.check("myapp.billing.deep.er.send")
    for path in ("tests.hooks.record", "myapp.billing.send", "myapp.billingx.send", "os.system"):
        with pytest.raises(TaskNotAllowed, match=r"not in the allowed tasks \(tests.tasks, myapp"):
            allowed.check(path)


def test_a_listed_standard_module_is_allowed():
    AllowedTasks(["time"]).check("time.sleep")


def test_patterns_are_module_names():
    assert AllowedTasks("a.b, c.*").patterns == ("a.b", "c.*")
    for bad in ("a.", "*", "a.*.b", "a b.c-d", "1a", "a..b", ""):
        with pytest.raises(AlligatorException, match="is not a module name"):
            AllowedTasks([bad])


def test_modules_to_import():
    allowed = AllowedTasks(["a.b", "c.*", "a.b"])
    assert allowed.modules_to_import() == ["a.b", "c"]
    assert AllowedTasks().modules_to_import() == []


def test_a_refused_module_is_never_imported(tmp_path, monkeypatch):
    (tmp_path / "noisy_module.py").write_text("raise SystemExit('imported!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TaskNotAllowed):
        Task.deserialize(payload("noisy_module", "run"), AllowedTasks(["tests.tasks"]))
    assert "noisy_module" not in sys.modules


def test_a_function_imported_into_an_allowed_module_from_elsewhere_is_refused(
    tmp_path, monkeypatch
):
    (tmp_path / "reexports.py").write_text("from subprocess import check_call\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TaskNotAllowed, match="reexports.check_call is subprocess.check_call"):
        Task.deserialize(payload("reexports", "check_call", ["true"]))


def test_hooks_must_be_allowed_too():
    data = payload("tests.tasks", "add", 1, 2, on_error="os.system")
    with pytest.raises(TaskNotAllowed, match="on_error hook os.system"):
        Task.deserialize(data)
    data = payload("tests.tasks", "add", 1, 2, on_success="tests.hooks.on_success")
    with pytest.raises(TaskNotAllowed, match="on_success hook"):
        Task.deserialize(data, AllowedTasks(["tests.tasks"]))


def test_a_worker_dead_letters_a_task_outside_its_list_without_running_it(gator, tmp_path):
    marker = tmp_path / "ran"
    gator.backend.push(gator.queue_name, "evil", payload("os", "system", f"touch {marker}"))
    gator.backend.push(gator.queue_name, "outside", payload("tests.hooks", "flaky", "x"))
    gator.task(tasks.append_line, str(tmp_path / "ok"), "fine")
    Worker(gator, max_tasks=3, allowed_tasks=["tests.tasks"]).run_forever()
    assert not marker.exists()
    assert tasks.lines(tmp_path / "ok") == ["fine"]
    dead = {letter.task_id: letter.error for letter in gator.dead_letters()}
    assert set(dead) == {"evil", "outside"}
    assert "Its function os.system is not allowed" in dead["evil"]
    assert "Its function tests.hooks.flaky is not allowed" in dead["outside"]


def test_a_worker_imports_its_listed_modules_before_its_first_task(gator):
    worker = Worker(gator, max_tasks=1, allowed_tasks=["tests.no_such_module"])
    with pytest.raises(AlligatorException, match="tests.no_such_module"):
        worker.run_forever()


def test_pop_and_get_refuse_the_standard_library_too():
    gator = Gator(f"locmem://{uuid.uuid4().hex}")
    gator.backend.push(gator.queue_name, "t1", payload("os", "getpid"))
    with pytest.raises(AlligatorException, match="not allowed"):
        gator.pop()
    assert [letter.task_id for letter in gator.dead_letters()] == ["t1"]
