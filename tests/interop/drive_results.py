#!/usr/bin/env python3
"""Drive a Celeriac (Rust) worker from Python Celery with a result store
that any process reads: Redis, Celery's database backend on PostgreSQL, or
django-celery-results (``django-db``) on PostgreSQL.

Usage::

    drive_results.py <broker-url> <backend-url> <RQ> <PQ> [scenario ...]

A Rust worker named ``celeriac@RQ`` must consume queue ``RQ`` with the
``demo.*`` tasks and ``--result-backend <backend-url>``, and a Python Celery
worker running ``tasks.py`` (this directory) must consume ``PQ`` with the
same backend. This process is a plain Celery application configured the
usual way (``backend='redis://...'``, ``backend='db+postgresql://...'``, or
``backend='django-db'`` for Celeriac's ``django-db+postgresql://...``, the
tables made by Django's migrations beforehand): nothing in it knows the
worker is Rust. On the database backend, chords are joined by
``celery.chord_unlock``, which the worker consuming the body's queue runs:
the Rust worker for ``demo.*`` bodies, Python for ``interop.*``; on
django-db, by the ``ChordCounter`` row every header task counts down.
Scenarios marked for one store run only against it.

Output: one ``ok <name>`` or ``FAIL <name>: <detail>`` line per scenario,
then ``N passed, M failed``.  Exit status 1 if any scenario failed.
"""

import json
import pickle
import sys
import time
import traceback

from django_results.setup import celery_backend

import celery
from celery import Celery, chain, chord, group, states
from celery.result import AsyncResult, GroupResult

TIMEOUT = 60
SCENARIOS = []


class Mismatch(Exception):
    """A scenario saw something other than what it expected."""


def scenario(fn=None, *, only=None):
    """Registers a scenario; ``only`` names the stores it is for (all if
    None): ``redis``, ``db``, ``django``."""
    def register(fn):
        fn.only = (only,) if isinstance(only, str) else only
        SCENARIOS.append(fn)
        return fn
    return register(fn) if fn else register


def expect(condition, detail):
    if not condition:
        raise Mismatch(detail)


class RedisStore:
    """What the Redis backend holds for a task."""

    def __init__(self, url):
        import redis

        self.redis = redis.Redis.from_url(url)

    def raw(self, task_id):
        """The stored document's text and its time to live, or None."""
        raw = self.redis.get(f'celery-task-meta-{task_id}')
        if raw is None:
            return None
        return raw.decode(), self.redis.ttl(f'celery-task-meta-{task_id}')


class DatabaseStore:
    """What Celery's database backend holds for a task, read with SQL."""

    def __init__(self, app):
        self.backend = app.backend

    def raw(self, task_id):
        """The ``result`` column's text and the row's age limit, or None."""
        from sqlalchemy import text

        session = self.backend.ResultSession()
        try:
            row = session.execute(
                text('SELECT status, result, date_done FROM celery_taskmeta WHERE task_id = :id'),
                {'id': task_id},
            ).first()
        finally:
            session.close()
        if row is None:
            return None
        status, result, date_done = row
        result = bytes(result)
        # Celery 5.6 and earlier pickle the column (SQLAlchemy's PickleType),
        # 5.7 stores JSON bytes: the Rust worker must write what this reads.
        pickled = result[:1] == b'\x80'
        expect(pickled == (celery.VERSION < (5, 7)),
               f'{task_id}: result column {result[:20]!r} for Celery {celery.__version__}')
        if pickled:
            result = json.dumps(pickle.loads(result)).encode()
        document = f'{{"status": "{status}", "result": {result.decode()}'
        expect(date_done is not None, f'{task_id} has no date_done')
        return document, None


class DjangoStore:
    """What django-celery-results holds for a task, read through the ORM."""

    def raw(self, task_id):
        """The ``result`` column's text, or None."""
        from django_celery_results.models import TaskResult

        row = TaskResult.objects.filter(task_id=task_id).first()
        if row is None:
            return None
        return f'{{"status": "{row.status}", "result": {row.result}', None

    def row(self, task_id):
        from django_celery_results.models import TaskResult

        return TaskResult.objects.get(task_id=task_id)


class Context:
    def __init__(self, broker, backend, rq, pq):
        self.broker, self.rq, self.pq = broker, rq, pq
        self.backend = celery_backend(backend)
        self.app = self.make_app()
        if backend.startswith('db+'):
            self.store, self.kind = DatabaseStore(self.app), 'db'
        elif backend.startswith('django-db+'):
            self.store, self.kind = DjangoStore(), 'django'
        else:
            self.store, self.kind = RedisStore(backend), 'redis'

    def make_app(self):
        app = Celery('driver', broker=self.broker, backend=self.backend)
        app.conf.task_routes = {'demo.*': {'queue': self.rq}, 'interop.*': {'queue': self.pq}}
        app.conf.result_extended = True
        return app

    def send(self, name, *args, **options):
        return self.app.send_task(name, args=args, **options)

    def sig(self, name, *args, **options):
        return self.app.signature(name, args=args, **options)


# -- results -----------------------------------------------------------------

@scenario
def result(ctx):
    got = ctx.send('demo.add', 2, 3).get(timeout=TIMEOUT)
    expect(got == 5, f'demo.add(2, 3) returned {got!r}')


@scenario
def stored_as_celery_stores_it(ctx):
    r = ctx.send('demo.add', 20, 22)
    r.get(timeout=TIMEOUT)
    raw, ttl = ctx.store.raw(r.id)
    if ttl is not None:
        expect(0 < ttl <= 86400, f'{r.id} has TTL {ttl}, expected result_expires (1 day)')
    expect(raw.startswith('{"status": "SUCCESS", "result": 42'), f'stored {raw[:80]}')


@scenario
def failure(ctx):
    r = ctx.send('demo.fail', 'boom')
    try:
        r.get(timeout=TIMEOUT)
    except ValueError as exc:
        expect(str(exc) == 'boom', f'ValueError carries {exc!r}')
    else:
        raise Mismatch('demo.fail did not raise')
    expect(r.state == states.FAILURE, f'state {r.state}')
    tb = r.traceback or ''
    expect(tb.startswith('Traceback (most recent call last):'), f'traceback {tb!r}')
    expect('in demo.fail' in tb and 'ValueError: boom' in tb, f'traceback {tb!r}')


# django-celery-results keeps other extended fields (task_name, the
# arguments' reprs): django_admin_fields checks those.
@scenario(only=('redis', 'db'))
def extended_fields(ctx):
    r = ctx.send('demo.add', 4, 5)
    r.get(timeout=TIMEOUT)
    fresh = AsyncResult(r.id, app=ctx.app)
    expect(fresh.name == 'demo.add', f'name {fresh.name!r}')
    expect(list(fresh.args) == [4, 5], f'args {fresh.args!r}')
    expect(fresh.kwargs == {}, f'kwargs {fresh.kwargs!r}')
    expect(fresh.worker == f'celeriac@{ctx.rq}', f'worker {fresh.worker!r}')
    expect(fresh.queue == ctx.rq, f'queue {fresh.queue!r}')
    expect(fresh.retries == 0, f'retries {fresh.retries!r}')
    expect(fresh.date_done is not None, 'no date_done')


@scenario
def forget(ctx):
    r = ctx.send('demo.add', 1, 1)
    r.get(timeout=TIMEOUT)
    r.forget()
    expect(ctx.store.raw(r.id) is None, 'the result survived forget()')
    expect(AsyncResult(r.id, app=ctx.app).state == states.PENDING, 'not PENDING after forget')


@scenario
def read_by_two_clients(ctx):
    r = ctx.send('demo.add', 7, 8)
    first = r.get(timeout=TIMEOUT)
    other = ctx.make_app()
    try:
        second = other.AsyncResult(r.id).get(timeout=TIMEOUT)
        third = other.AsyncResult(r.id).get(timeout=TIMEOUT)
    finally:
        other.close()
    expect(first == second == third == 15, f'read {first!r}, {second!r}, {third!r}')


@scenario
def progress(ctx):
    r = ctx.send('demo.progress', 3, 0.4)
    seen = []
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        # One read of the stored meta: r.state then r.info would be two reads,
        # and the task may finish between them (info is then the int result).
        meta = ctx.app.backend.get_task_meta(r.id)
        if meta['status'] == states.SUCCESS:
            break
        if meta['status'] == 'PROGRESS' and meta['result'] not in seen:
            seen.append(meta['result'])
        time.sleep(0.02)
    expect(r.get(timeout=TIMEOUT) == 3, 'demo.progress did not return 3')
    expect(seen and all(i['total'] == 3 for i in seen), f'PROGRESS infos {seen!r}')
    expect(seen == sorted(seen, key=lambda i: i['done']), f'out of order: {seen!r}')


@scenario
def started(ctx):
    r = ctx.send('demo.sleep', 1.0)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and r.state == states.PENDING:
        time.sleep(0.02)
    expect(r.state == states.STARTED, f'state {r.state} while running (--track-started)')
    expect(r.info.get('hostname') == f'celeriac@{ctx.rq}', f'STARTED info {r.info!r}')
    r.get(timeout=TIMEOUT)


# -- groups and chords -------------------------------------------------------

@scenario
def group_of_rust_tasks(ctx):
    g = group(ctx.sig('demo.add', i, i) for i in range(10)).apply_async()
    got = g.get(timeout=TIMEOUT)
    expect(got == [2 * i for i in range(10)], f'group returned {got!r}')
    g.save()
    restored = GroupResult.restore(g.id, app=ctx.app)
    expect([r.id for r in restored.results] == [r.id for r in g.results], 'restore differs')


@scenario
def group_of_python_and_rust(ctx):
    g = group([ctx.sig('demo.add', 1, 2), ctx.sig('interop.add', 3, 4),
               ctx.sig('demo.add', 5, 6)]).apply_async()
    got = g.get(timeout=TIMEOUT)
    expect(got == [3, 7, 11], f'mixed group returned {got!r}')


@scenario
def chord_with_rust_body(ctx):
    c = chord([ctx.sig('demo.add', i, i) for i in range(20)], ctx.sig('demo.tsum'))
    got = c.apply_async().get(timeout=TIMEOUT)
    expect(got == sum(2 * i for i in range(20)), f'chord returned {got!r}')


@scenario
def chord_with_python_body(ctx):
    c = chord([ctx.sig('demo.add', i, 1) for i in range(5)], ctx.sig('interop.tsum'))
    got = c.apply_async().get(timeout=TIMEOUT)
    expect(got == sum(i + 1 for i in range(5)), f'chord returned {got!r}')


@scenario
def chord_python_header_rust_body(ctx):
    c = chord([ctx.sig('interop.add', i, 10) for i in range(5)], ctx.sig('demo.tsum'))
    got = c.apply_async().get(timeout=TIMEOUT)
    expect(got == sum(i + 10 for i in range(5)), f'chord returned {got!r}')


@scenario
def chord_python_finishes_last(ctx):
    header = [ctx.sig('demo.add', i, 0) for i in range(4)] + [ctx.sig('interop.slow_add', 100, 0, 1.0)]
    got = chord(header, ctx.sig('demo.tsum')).apply_async().get(timeout=TIMEOUT)
    expect(got == 106, f'chord returned {got!r}')


@scenario
def chord_rust_finishes_last(ctx):
    header = [ctx.sig('interop.add', i, 0) for i in range(4)] + [ctx.sig('demo.sleep', 1.0)]
    got = chord(header, ctx.sig('interop.tsum')).apply_async().get(timeout=TIMEOUT)
    expect(got == 7.0, f'chord returned {got!r}')


@scenario
def chord_member_fails(ctx):
    header = [ctx.sig('demo.add', 1, 1), ctx.sig('demo.fail', 'member broke')]
    r = chord(header, ctx.sig('demo.tsum')).apply_async()
    # r.get() raises the failed member's own error (Celery checks the
    # header first); the body itself must be stored as a ChordError.
    body = AsyncResult(r.id, app=ctx.app)
    try:
        body.get(timeout=TIMEOUT)
    except Exception as exc:  # noqa: BLE001 -- the class is what we check
        expect(type(exc).__name__ == 'ChordError', f'raised {type(exc).__name__}: {exc!r}')
        expect('member broke' in str(exc), f'ChordError says {exc}')
    else:
        raise Mismatch('the chord did not fail')
    expect(body.state == states.FAILURE, f'the body is {body.state}')


@scenario
def chain_ending_in_a_chord(ctx):
    workflow = chain(ctx.sig('demo.add', 1, 1),
                     chord([ctx.sig('demo.add', 10), ctx.sig('interop.add', 20)],
                           ctx.sig('demo.tsum')))
    got = workflow.apply_async().get(timeout=TIMEOUT)
    expect(got == 34, f'chain into chord returned {got!r}')


# -- django-celery-results: what its admin shows ----------------------------

@scenario(only='django')
def django_admin_fields(ctx):
    r = ctx.send('demo.add', 2, 3, headers={'periodic_task_name': 'nightly-report'})
    expect(r.get(timeout=TIMEOUT) == 5, 'demo.add(2, 3) did not return 5')
    row = ctx.store.row(r.id)
    expect(row.task_name == 'demo.add', f'task_name {row.task_name!r}')
    expect(row.task_args == '"(2, 3)"', f'task_args {row.task_args!r}')
    expect(row.task_kwargs == '"{}"', f'task_kwargs {row.task_kwargs!r}')
    expect(row.worker == f'celeriac@{ctx.rq}', f'worker {row.worker!r}')
    expect(row.periodic_task_name == 'nightly-report', f'periodic_task_name {row.periodic_task_name!r}')
    expect(row.content_type == 'application/json' and row.content_encoding == 'utf-8',
           f'content {row.content_type!r} {row.content_encoding!r}')
    expect(row.result == '5' and row.meta == '{"children": []}', f'result {row.result!r} meta {row.meta!r}')
    expect(row.date_created is not None and row.date_done >= row.date_created,
           f'created {row.date_created!r}, done {row.date_done!r}')
    fresh = AsyncResult(r.id, app=ctx.app)
    expect(fresh.args == '(2, 3)' and fresh.kwargs == '{}', f'AsyncResult {fresh.args!r} {fresh.kwargs!r}')


@scenario(only='django')
def django_masked_arguments_stay_masked(ctx):
    r = ctx.send('demo.add', 40, 2, argsrepr='(40, <masked>)')
    r.get(timeout=TIMEOUT)
    row = ctx.store.row(r.id)
    expect(row.task_args == '"(40, <masked>)"', f'task_args {row.task_args!r}')


@scenario(only='django')
def django_failure_and_start_times(ctx):
    r = ctx.send('demo.fail', 'admin sees this')
    try:
        r.get(timeout=TIMEOUT)
    except ValueError:
        pass
    row = ctx.store.row(r.id)
    expect(row.status == states.FAILURE, f'status {row.status}')
    expect('admin sees this' in (row.traceback or ''), f'traceback {row.traceback!r}')
    r = ctx.send('demo.sleep', 0.5)
    r.get(timeout=TIMEOUT)
    row = ctx.store.row(r.id)
    expect(row.date_started is not None, 'date_started not set (--track-started)')
    expect(row.date_started <= row.date_done, f'started {row.date_started}, done {row.date_done}')


@scenario(only='django')
def django_chord_counter_is_removed(ctx):
    from django_celery_results.models import ChordCounter, GroupResult as GroupRow

    c = chord([ctx.sig('demo.add', i, i) for i in range(5)], ctx.sig('demo.tsum'))
    r = c.apply_async()
    expect(r.get(timeout=TIMEOUT) == 20, 'chord returned the wrong sum')
    gid = r.parent.id if r.parent is not None else None
    expect(gid is not None, 'the chord result has no header group')
    expect(not ChordCounter.objects.filter(group_id=gid).exists(), 'the ChordCounter row stayed')
    g = group(ctx.sig('demo.add', i, 1) for i in range(3)).apply_async()
    g.get(timeout=TIMEOUT)
    g.save()
    expect(GroupRow.objects.filter(group_id=g.id).exists(), 'no GroupResult row for the saved group')


# -- runner ------------------------------------------------------------------

def run(ctx, selected):
    passed = failed = 0
    for fn in SCENARIOS:
        if selected and fn.__name__ not in selected:
            continue
        if fn.only is not None and ctx.kind not in fn.only:
            continue
        try:
            fn(ctx)
        except Mismatch as exc:
            print(f'FAIL {fn.__name__}: {exc}', flush=True)
            failed += 1
        except Exception as exc:  # noqa: BLE001 -- report and keep going
            detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
            print(f'FAIL {fn.__name__}: {detail}', flush=True)
            failed += 1
        else:
            print(f'ok {fn.__name__}', flush=True)
            passed += 1
    print(f'{passed} passed, {failed} failed', flush=True)
    return failed


def main(argv):
    if len(argv) < 5:
        sys.exit(f'usage: {argv[0]} <broker-url> <backend-url> <RQ> <PQ> [scenario ...]')
    ctx = Context(*argv[1:5])
    try:
        failed = run(ctx, set(argv[5:]))
    finally:
        ctx.app.close()
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main(sys.argv)
