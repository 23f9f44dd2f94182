"""The reference tutorial's path, on a locmem queue: offline a slow function, run a worker."""

import pytest

from alligator import Task, Worker

from . import tasks


def send_post_email(path, user_id, post_id):
    """The tutorial's slow function, reduced to writing what it would have sent."""
    return tasks.append_line(path, f"post {post_id} by user {user_id}")


def test_tutorial(tmp_path, gator, capsys):
    outbox = str(tmp_path / "outbox.txt")

    # Calling the function directly still works.
    send_post_email(outbox, 1, 10)

    # Put it on the queue instead; nothing runs until a worker takes it.
    gator.task(send_post_email, outbox, 2, 20)
    assert tasks.lines(outbox) == ["post 10 by user 1"]

    # Retries for failsome tasks.
    with gator.options(retries=3) as opts:
        retried = opts.task(send_post_email, outbox, 3, 30)
    assert retried.retries == 3

    # A worker consumes the queue.
    Worker(gator, max_tasks=2).run_forever()
    assert tasks.lines(outbox)[1:] == ["post 20 by user 2", "post 30 by user 3"]
    assert "Consumed 2 tasks." in capsys.readouterr().out

    # Testing tasks: run them in-process instead of queueing them.
    with gator.options(**{"async": False}) as opts:
        opts.task(send_post_email, outbox, 4, 40)
    assert tasks.lines(outbox)[-1] == "post 40 by user 4"
    assert gator.len() == 0


def test_reference_examples(gator):
    backend = gator.build_backend("locmem://")
    assert backend is not None

    task = Task(**{"async": False}, retries=5)
    task.to_call(tasks.add, 101, 35)
    assert gator.execute(task).result == 136

    task = Task(**{"async": False}, retries=3)
    assert gator.push(task, tasks.add, 1, b=2).result == 3

    on_queue = gator.task(tasks.add, 18, 9)
    assert gator.cancel(on_queue.task_id).func_args == [18, 9]

    with gator.options(retries=2, on_success="tests.hooks.on_success") as opts:
        opts.task(tasks.add, 2678, 0)
    assert gator.len() == 1
    assert gator.pop().result == 2678

    with pytest.raises(ValueError):
        gator.push(Task(is_async=False), tasks.fail)
