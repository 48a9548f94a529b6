#!/usr/bin/env python3
"""Drive a Celeriac (Rust) worker from a plain Python Celery client.

Usage::

    drive_rust_worker.py <broker-url> <RQ> <PQ>

A Rust worker must be consuming queue ``RQ`` with the ``demo.*`` tasks, and a
Python Celery worker running ``tasks.py`` (this directory) must be consuming
queue ``PQ``.  This process is only a producer: it defines no tasks, sends
them by name with ``app.send_task`` / ``app.signature`` and reads results
through the ``rpc://`` backend, as a Python application would.

Rust worker tasks: ``demo.add(x, y)``, ``demo.echo(value)``,
``demo.fail(message)`` (raises ``ValueError(message)``),
``demo.flaky(failures)`` (retries ``failures`` times, 0.1 s apart),
``demo.now()`` (worker clock, Unix seconds) and ``demo.sleep(seconds)``.

Output: one ``ok <name>`` or ``FAIL <name>: <detail>`` line per scenario,
then ``N passed, M failed``.  Exit status 1 if any scenario failed.

Note on the rpc backend: once a client has called ``get()``, Celery keeps a
``basic.consume`` consumer on its reply queue for the life of the process
(``RPCBackend.on_result_fulfilled`` does not cancel it).  The broker then
pushes every later reply to that consumer, so polling ``AsyncResult.state``
(which uses ``basic.get`` on the same queue) sees nothing and stays
``PENDING`` until some ``get()`` drains the consumer.  The ``retry``
scenario therefore polls from a fresh client whose reply queue has never
been consumed.
"""

import sys
import time
import traceback
import uuid
from datetime import date, datetime, timezone
from datetime import time as clock_time
from decimal import Decimal

from celery import Celery, chain, states
from celery.exceptions import TaskRevokedError

TIMEOUT = 30
POLL_INTERVAL = 0.02

SCENARIOS = []


class Mismatch(Exception):
    """A scenario saw something other than what it expected."""


def scenario(fn):
    SCENARIOS.append(fn)
    return fn


def expect(condition, detail):
    if not condition:
        raise Mismatch(detail)


def make_app(broker, rq, pq):
    app = Celery('driver', broker=broker, backend='rpc://')
    app.conf.task_routes = {'demo.*': {'queue': rq}, 'interop.*': {'queue': pq}}
    return app


class Context:
    def __init__(self, broker, rq, pq):
        self.broker, self.rq, self.pq = broker, rq, pq
        self.app = make_app(broker, rq, pq)

    def send(self, name, *args, **options):
        return self.app.send_task(name, args=args, **options)

    def sig(self, name, *args, **options):
        queue = self.rq if name.startswith('demo.') else self.pq
        return self.app.signature(name, args=args, queue=queue, **options)


def same(a, b):
    """Equality that also requires identical types (True is not 1, 1 is not 1.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (datetime, clock_time)):
        return a == b and a.utcoffset() == b.utcoffset()
    if isinstance(a, Decimal):
        return str(a) == str(b)
    return a == b


def expect_raises(result, class_name):
    """get() must raise an exception of the given class name; returns it."""
    try:
        value = result.get(timeout=TIMEOUT)
    except Exception as exc:  # noqa: BLE001 -- the class is what we check
        expect(type(exc).__name__ == class_name,
               f'expected {class_name}, got {type(exc).__module__}.'
               f'{type(exc).__name__}: {exc!r}')
        return exc
    raise Mismatch(f'expected {class_name}, got result {value!r}')


# -- arguments --------------------------------------------------------------

@scenario
def positional(ctx):
    got = ctx.send('demo.add', 2, 3).get(timeout=TIMEOUT)
    expect(same(got, 5), f'demo.add(2, 3) returned {got!r}')


@scenario
def keyword(ctx):
    got = ctx.app.send_task('demo.add', kwargs={'x': 2, 'y': 40}).get(timeout=TIMEOUT)
    expect(same(got, 42), f'demo.add(x=2, y=40) returned {got!r}')


@scenario
def mixed(ctx):
    got = ctx.send('demo.add', 2, kwargs={'y': 5}).get(timeout=TIMEOUT)
    expect(same(got, 7), f'demo.add(2, y=5) returned {got!r}')


# -- values ------------------------------------------------------------------

JSON_VALUE = {
    'text': 'plain ascii',
    'unicode': 'Grüße, 日本語, Ελληνικά, 🦀🎉 (\U0001F600)',
    'control': '\x00\x01\x07\x1f\x7f tab\t nl\n cr\r quote" backslash\\ \u2028\u2029',
    'null': None,
    'true': True,
    'false': False,
    'zero': 0,
    'minus_one': -1,
    'half': 0.5,
    'huge_float': 1e100,
    'i64_max': 2**63 - 1,
    'beyond_u64': 2**64,
    'below_i64': -(2**63) - 1,
    'nested': [1, [2, [3, {'deep': [None, {'deeper': 'x'}]}]], {'k': [True, 0.25]}],
    'empty_list': [],
    'empty_dict': {},
    'ключ 🗝': 'unicode key',
}


@scenario
def json_types(ctx):
    got = ctx.send('demo.echo', JSON_VALUE).get(timeout=TIMEOUT)
    if same(got, JSON_VALUE):
        return
    if type(got) is not dict:
        raise Mismatch(f'expected a dict back, got {type(got).__name__}: {got!r}')
    bad = sorted(set(JSON_VALUE) ^ set(got))
    bad += [k for k in JSON_VALUE if k in got and not same(JSON_VALUE[k], got[k])]
    raise Mismatch('; '.join(f'{k!r}: sent {JSON_VALUE.get(k)!r}, got {got.get(k)!r}'
                             for k in bad))


KOMBU_VALUES = [
    datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc),
    datetime(2024, 1, 2, 3, 4, 5),
    date(2024, 2, 29),
    clock_time(23, 59, 58, 123456),
    Decimal('1.10'),
    uuid.UUID('12345678-1234-5678-1234-567812345678'),
    b'\xff\x00',
    b'hi',
]


@scenario
def kombu_types(ctx):
    got = ctx.send('demo.echo', KOMBU_VALUES).get(timeout=TIMEOUT)
    expect(type(got) is list and len(got) == len(KOMBU_VALUES),
           f'expected a list of {len(KOMBU_VALUES)}, got {got!r}')
    bad = [f'sent {type(s).__name__} {s!r}, got {type(g).__name__} {g!r}'
           for s, g in zip(KOMBU_VALUES, got) if not same(s, g)]
    expect(not bad, '; '.join(bad))


# -- large bodies ------------------------------------------------------------
# A body of 4 KiB or more keeps its text in the Rust worker, which reads each
# argument from its slice of it; these check that path end to end.

def document(size):
    """A dict of about ``size`` bytes: half text, half a list of ids."""
    sentence = 'The quick brown fox jumps over the lazy dog. '
    text = (sentence * (size // len(sentence) + 1))[:size // 2]
    ids = list(range(1_000_000, 1_000_000 + size // 18))
    return {'text': text, 'ids': ids}


@scenario
def large_typed_argument(ctx):
    doc = document(200_000)
    want = [len(doc['text']), len(doc['ids'])]
    got = ctx.send('demo.measure', doc).get(timeout=TIMEOUT)
    expect(got == want, f'demo.measure(<200 KB document>) returned {got!r}, expected {want}')
    got = ctx.app.send_task('demo.measure', kwargs={'document': doc}).get(timeout=TIMEOUT)
    expect(got == want, f'demo.measure(document=<200 KB>) returned {got!r}, expected {want}')


LARGE_VALUE = {
    'text': '\u00e9\U0001f600 "quoted" \\ back' * 5_000,
    'numbers': [2**70, -0.0, 1e100, 1.5, -7] * 2_000,
    'nested': [[[[]]], {'a': [None, True, False]}] * 500,
}


@scenario
def large_value_argument(ctx):
    got = ctx.send('demo.echo', LARGE_VALUE).get(timeout=TIMEOUT)
    expect(same(got, LARGE_VALUE), 'demo.echo(<large value>) did not return it unchanged')


@scenario
def large_body_with_kombu_types(ctx):
    value = KOMBU_VALUES + ['x' * 20_000]
    got = ctx.send('demo.echo', value).get(timeout=TIMEOUT)
    expect(type(got) is list and len(got) == len(value) and all(map(same, value, got)),
           'demo.echo(<kombu types and 20 KB of text>) did not return them unchanged')


@scenario
def large_argument_of_the_wrong_type(ctx):
    exc = expect_raises(ctx.send('demo.measure', 'x' * 50_000), 'TypeError')
    expect("argument 'document' must be Document, got 'xxx" in str(exc),
           f'the TypeError does not describe the argument: {str(exc)[:200]!r}')


# -- scheduling --------------------------------------------------------------

@scenario
def countdown(ctx):
    t0 = time.time()
    ran_at = ctx.send('demo.now', countdown=2).get(timeout=TIMEOUT)
    expect(isinstance(ran_at, float), f'demo.now returned {ran_at!r}')
    expect(ran_at >= t0 + 2 - 0.05,
           f'ran {ran_at - t0:.3f} s after sending, countdown was 2 s')


@scenario
def expires(ctx):
    result = ctx.send('demo.now', countdown=3, expires=1)
    try:
        value = result.get(timeout=TIMEOUT)
    except TaskRevokedError:
        pass
    else:
        raise Mismatch(f'expected TaskRevokedError, the task ran and returned {value!r}')
    expect(result.state == states.REVOKED, f'state is {result.state}, expected REVOKED')
    late = later_states(ctx, result.id, seconds=1.0)
    expect(not late, f'states received after the revocation: {late}')


def later_states(ctx, task_id, seconds):
    """States for ``task_id`` that reach the reply queue within ``seconds``.

    Waits on a ``demo.sleep`` and uses ``on_message``, which sees every reply
    drained meanwhile, whatever task it belongs to.
    """
    seen = []

    def on_message(meta):
        if meta.get('task_id') == task_id:
            seen.append(meta['status'])

    ctx.send('demo.sleep', seconds).get(timeout=TIMEOUT, on_message=on_message)
    return seen


# -- failures and retries ----------------------------------------------------

@scenario
def failure(ctx):
    result = ctx.send('demo.fail', 'boom')
    exc = expect_raises(result, 'ValueError')
    expect(str(exc) == 'boom', f'str(exception) is {str(exc)!r}, expected \'boom\'')
    expect(result.state == states.FAILURE, f'state is {result.state}, expected FAILURE')


@scenario
def retry(ctx):
    # A fresh client: state polling only works on a reply queue that no
    # get() has started consuming (see the module docstring).
    app = make_app(ctx.broker, ctx.rq, ctx.pq)
    try:
        result = app.send_task('demo.flaky', args=(2,))
        seen = poll_states(result)
        expect('RETRY' in seen and 'SUCCESS' in seen
               and seen.index('RETRY') < seen.index('SUCCESS'),
               f'states seen while polling: {seen}, expected RETRY before SUCCESS')
        got = result.get(timeout=TIMEOUT)
        expect(got == 'succeeded after 2 retries', f'returned {got!r}')
    finally:
        app.close()


def poll_states(result):
    """Distinct states of ``result``, polled every 20 ms until ready."""
    seen = []
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        state = result.state
        if not seen or seen[-1] != state:
            seen.append(state)
        if state in states.READY_STATES:
            return seen
        time.sleep(POLL_INTERVAL)
    raise Mismatch(f'not ready after {TIMEOUT} s; states seen: {seen}')


# -- canvas ------------------------------------------------------------------

@scenario
def link_to_python(ctx):
    callback = ctx.sig('interop.add', 10)
    callback.freeze()
    parent = ctx.send('demo.add', 2, 2, link=callback)
    got = parent.get(timeout=TIMEOUT)
    expect(same(got, 4), f'demo.add(2, 2) returned {got!r}')
    got = ctx.app.AsyncResult(callback.id).get(timeout=TIMEOUT)
    expect(same(got, 14), f'linked interop.add(4, 10) returned {got!r}')


@scenario
def mixed_chain(ctx):
    workflow = chain(ctx.sig('demo.add', 1, 2), ctx.sig('interop.add', 3),
                     ctx.sig('demo.add', 4))
    got = workflow.apply_async().get(timeout=TIMEOUT)
    expect(same(got, 10), f'(1 + 2) + 3 + 4 returned {got!r}')


# -- volume and errors -------------------------------------------------------

@scenario
def many(ctx):
    results = [(i, ctx.send('demo.add', i, 1000)) for i in range(100)]
    wrong = [(i, got) for i, got in ((i, r.get(timeout=TIMEOUT)) for i, r in results)
             if not same(got, i + 1000)]
    expect(not wrong, f'{len(wrong)} wrong results, e.g. {wrong[:5]}')


@scenario
def by_python_name_unknown(ctx):
    result = ctx.send('demo.does_not_exist')
    expect_raises(result, 'NotRegistered')
    expect(result.state == states.FAILURE, f'state is {result.state}, expected FAILURE')


# -- runner ------------------------------------------------------------------

def run(ctx):
    passed = failed = 0
    for fn in SCENARIOS:
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
    if len(argv) != 4:
        sys.exit(f'usage: {argv[0]} <broker-url> <RQ> <PQ>')
    ctx = Context(*argv[1:])
    try:
        failed = run(ctx)
    finally:
        ctx.app.close()
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main(sys.argv)
