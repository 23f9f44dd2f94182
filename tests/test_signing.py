"""Signed payloads: producers sign with a shared secret; workers with it run nothing else."""

import json
import uuid

import pytest

from alligator import Gator
from alligator.exceptions import AlligatorException, SignatureError
from alligator.signing import Signer
from alligator.workers import Worker

from . import tasks

SECRET = "a-secret-of-at-least-16-characters"
OLD_SECRET = "the-secret-being-replaced-now"


def test_sign_then_verify_gives_the_payload_back():
    signer = Signer(SECRET)
    data = '{"task_id":"a1","module":"tests.tasks"}'
    signed = signer.sign(data)
    assert signed.startswith('{"hmac":"') and json.loads(signed)["task_id"] == "a1"
    assert signer.verify(signed) == data


def test_an_unsigned_or_tampered_payload_is_refused():
    signer = Signer(SECRET)
    signed = signer.sign('{"task_id":"a1","args":[1]}')
    with pytest.raises(SignatureError, match="not signed"):
        signer.verify('{"task_id":"a1","args":[1]}')
    with pytest.raises(SignatureError, match="does not match"):
        signer.verify(signed.replace("[1]", "[2]"))
    with pytest.raises(SignatureError, match="does not match"):
        Signer("another-secret-of-16-chars").verify(signed)
    with pytest.raises(SignatureError):
        signer.verify('{"hmac":"' + "é" * 64 + '","x":1}')  # not even hex


def test_rotation_signs_with_the_first_secret_and_accepts_any():
    old = Signer(OLD_SECRET).sign('{"n":1}')
    rotating = Signer([SECRET, OLD_SECRET])
    assert rotating.verify(old) == '{"n":1}'
    assert Signer(SECRET).verify(rotating.sign('{"n":2}')) == '{"n":2}'
    assert Signer(f"{SECRET}, {OLD_SECRET}").verify(old) == '{"n":1}'


@pytest.mark.parametrize("secrets", ["short", [], ["fine-secret-of-16+", "short"], [None]])
def test_secrets_must_be_long_enough(secrets):
    with pytest.raises(AlligatorException, match="secret"):
        Signer(secrets)


def test_a_signer_never_shows_its_secrets():
    assert SECRET not in repr(Signer(SECRET))


def test_a_signed_queue_runs_signed_tasks_and_dead_letters_the_others(tmp_path):
    dsn = f"locmem://{uuid.uuid4().hex}"
    producer = Gator(dsn, secret=SECRET)
    stranger = Gator(dsn)  # no secret: its tasks are unsigned
    outbox = tmp_path / "outbox"
    signed = producer.task(tasks.append_line, str(outbox), "signed")
    unsigned = stranger.task(tasks.append_line, str(outbox), "unsigned")
    tampered = producer.task(tasks.append_line, str(outbox), "tampered")
    data = producer.backend.cancel(producer.queue_name, tampered.task_id)
    producer.backend.push(producer.queue_name, tampered.task_id, data.replace("tampered", "evil"))

    Worker(Gator(dsn, secret=[SECRET, OLD_SECRET]), max_tasks=3).run_forever()
    assert tasks.lines(outbox) == ["signed"]
    dead = {letter.task_id: letter.error for letter in producer.dead_letters()}
    assert set(dead) == {unsigned.task_id, tampered.task_id}
    assert "is not signed" in dead[unsigned.task_id]
    assert "signature does not match" in dead[tampered.task_id]
    assert signed.task_id not in dead


def test_retries_and_dead_letters_of_a_signed_queue_stay_signed():
    dsn = f"locmem://{uuid.uuid4().hex}"
    gator = Gator(dsn, secret=SECRET)
    with gator.options(retries=1) as opts:
        opts.task(tasks.fail, "boom")
    Worker(gator, max_tasks=2).run_forever()  # the retry verified, then its last failure
    [dead] = gator.dead_letters()
    assert "ValueError: boom" in dead.error
    assert Signer(SECRET).verify(dead.data)
    assert gator.requeue_dead_letters() == 1
    with pytest.raises(ValueError):  # it verifies again after a requeue, and fails as before
        gator.pop()


def test_a_worker_without_a_secret_reads_signed_payloads(tmp_path):
    dsn = f"locmem://{uuid.uuid4().hex}"
    Gator(dsn, secret=SECRET).task(tasks.append_line, str(tmp_path / "out"), "read")
    Worker(Gator(dsn), max_tasks=1).run_forever()
    assert tasks.lines(tmp_path / "out") == ["read"]
