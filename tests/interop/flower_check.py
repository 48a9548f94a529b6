#!/usr/bin/env python3
"""Check that Flower (and ``celery events --dump``) can monitor a worker.

Usage::

    flower_check.py --node NODE --queue QUEUE [--add demo.add] [--fail demo.fail]
                    [scenario ...]

The broker and the (Redis) result backend come from ``CELERIAC_TEST_BROKER``
and ``CELERIAC_TEST_BACKEND``.  The worker named ``NODE`` must consume
``QUEUE`` and serve the two tasks named by the options (defaults: the Rust
worker's ``demo.add`` and ``demo.fail``, which raises ``ValueError``; a Python
worker running ``tasks.py`` serves them as ``interop.add`` and
``interop.value_error``).

The script starts Flower (the version pinned in requirements.txt) as
``celery -A tasks flower`` from this directory on a free local port, with
``FLOWER_UNAUTHENTICATED_API=true``, and stops it on exit.  It first turns the
worker's task events *off* (``disable_events``): Flower must turn them on by
itself, as it does for a Python worker started without ``-E``.

Output: one ``ok <name>`` or ``FAIL <name>: <detail>`` line per scenario, then
``N passed, M failed``.  Exit status 1 if any scenario failed.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

from celery import Celery, states

HERE = os.path.dirname(os.path.abspath(__file__))
RESULT_TIMEOUT = 20
DEADLINE = 30
SCENARIOS = []


class Mismatch(Exception):
    """A scenario saw something other than what it expected."""


def scenario(fn):
    SCENARIOS.append(fn)
    return fn


def expect(condition, detail):
    if not condition:
        raise Mismatch(detail)


def wait_for(probe, timeout, interval=0.5):
    """Calls ``probe`` until it returns something true; returns that, or the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Context:
    def __init__(self, opts):
        self.opts = opts
        self.node, self.queue, self.add, self.fail = opts.node, opts.queue, opts.add, opts.fail
        self.broker, self.backend = opts.broker, opts.backend
        self.app = Celery('driver', broker=self.broker, backend=self.backend)
        self.app.conf.task_routes = {name: {'queue': self.queue} for name in (self.add, self.fail)}
        self.env = dict(os.environ, CELERIAC_TEST_BROKER=self.broker,
                        CELERIAC_TEST_BACKEND=self.backend, FLOWER_UNAUTHENTICATED_API='true')
        self.flower = None
        self.flower_log = tempfile.NamedTemporaryFile('w+', prefix='flower-', suffix='.log')
        self.base = None
        self.sent = {}      # what tasks_api sent: {'add': [AsyncResult...], 'fail': AsyncResult}

    def send(self, name, *args, **options):
        return self.app.send_task(name, args=args, **options)

    # -- Flower process -------------------------------------------------------

    def start_flower(self):
        port = free_port()
        self.base = f'http://127.0.0.1:{port}'
        self.flower = subprocess.Popen(
            [sys.executable, '-m', 'celery', '-A', 'tasks', 'flower',
             f'--port={port}', '--address=127.0.0.1'],
            cwd=HERE, env=self.env, stdout=self.flower_log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        up = wait_for(lambda: self.flower.poll() is not None or self.status('/healthcheck') == 200, 30, 0.3)
        if self.flower.poll() is not None or not up:
            raise RuntimeError(f'Flower did not start (exit {self.flower.poll()}): {self.flower_tail()}')

    def stop_flower(self):
        if self.flower is None or self.flower.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.flower.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.flower.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def flower_tail(self, lines=15):
        self.flower_log.flush()
        with open(self.flower_log.name) as f:
            return ''.join(f.readlines()[-lines:])

    # -- HTTP -------------------------------------------------------------------

    def status(self, path):
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def get(self, path, parse=True):
        with urllib.request.urlopen(self.base + path, timeout=15) as resp:
            body = resp.read().decode()
        return json.loads(body) if parse else body


# -- scenarios -------------------------------------------------------------------

@scenario
def workers_api(ctx):
    """/api/workers?refresh=1 lists NODE with stats, registered, active_queues, conf."""
    last = {}

    def probe():
        nonlocal last
        last = ctx.get('/api/workers?refresh=1').get(ctx.node) or {}
        return all(k in last for k in ('stats', 'registered', 'active_queues', 'conf'))
    expect(wait_for(probe, DEADLINE), f'/api/workers lacks {ctx.node} or its inspect data: {last!r}')
    stats = last['stats']
    expect(isinstance(stats, dict) and isinstance(stats.get('pid'), int)
           and isinstance(stats.get('pool'), dict), f'stats {stats!r}')
    names = {n.split(' ', 1)[0] for n in last['registered']}
    expect(ctx.add in names and ctx.fail in names, f'registered {last["registered"]!r}')
    expect(any(q.get('name') == ctx.queue for q in last['active_queues']),
           f'active_queues {last["active_queues"]!r}')
    expect(isinstance(last['conf'], dict), f'conf {last["conf"]!r}')

    # With workername, Flower also asks for active/scheduled/reserved/revoked.
    one = ctx.get('/api/workers?refresh=1&workername=' + urllib.parse.quote(ctx.node)).get(ctx.node) or {}
    for key in ('active', 'scheduled', 'reserved', 'revoked'):
        expect(isinstance(one.get(key), list), f'/api/workers?workername: {key} is {one.get(key)!r}')


@scenario
def worker_online(ctx):
    """Flower's event state counts NODE alive (heartbeats) and its pages render."""
    status = {}

    def probe():
        nonlocal status
        status = ctx.get('/api/workers?status=1')
        return status.get(ctx.node) is True
    expect(wait_for(probe, DEADLINE), f'/api/workers?status=1 replied {status!r}')
    dashboard = ctx.get('/workers?json=1')['data']
    mine = [w for w in dashboard if w.get('hostname') == ctx.node]
    expect(mine and mine[0].get('status') is True, f'dashboard /workers?json=1 rows {dashboard!r}')
    expect(mine[0].get('worker-heartbeat', 0) >= 1, f'dashboard row {mine[0]!r} counts no heartbeat')
    page = ctx.get('/worker/' + urllib.parse.quote(ctx.node), parse=False)
    expect(ctx.node in page and ctx.queue in page, f'/worker/{ctx.node} page lacks the node or queue')


@scenario
def flower_enables_events(ctx):
    """Task events were turned off before Flower started; Flower turns them on."""
    # Flower sends enable_events (to every worker) every 5 s. Send a task each
    # second until one shows up in /api/tasks.
    sent = []

    def probe():
        sent.append(ctx.send(ctx.add, len(sent), 1).id)
        return set(sent) & set(ctx.get('/api/tasks'))
    seen = wait_for(probe, DEADLINE, 1.0)
    expect(seen, f'no task of {len(sent)} sent over {DEADLINE} s appears in /api/tasks '
                 '(task events never enabled)')


@scenario
def tasks_api(ctx):
    """/api/tasks lists the tasks with SUCCESS (and a runtime) and FAILURE."""
    adds = [ctx.send(ctx.add, i, 100) for i in range(3)]
    fail = ctx.send(ctx.fail, 'flower sees this')
    ctx.sent = {'add': adds, 'fail': fail}
    for r in adds + [fail]:
        r.get(timeout=RESULT_TIMEOUT, propagate=False)
    expect([r.state for r in adds + [fail]] == [states.SUCCESS] * 3 + [states.FAILURE],
           f'results {[r.state for r in adds + [fail]]}')
    ids = {r.id for r in adds} | {fail.id}
    tasks = {}

    def probe():
        nonlocal tasks
        tasks = ctx.get('/api/tasks')
        return ids <= set(tasks) and all(tasks[i].get('state') in (states.SUCCESS, states.FAILURE)
                                         for i in ids)
    expect(wait_for(probe, DEADLINE),
           f'/api/tasks: {({i: tasks.get(i, {}).get("state") for i in ids})!r}')
    for r in adds:
        t = tasks[r.id]
        expect(t['state'] == states.SUCCESS, f'{r.id} is {t["state"]} in Flower')
        expect(isinstance(t.get('runtime'), float) and t['runtime'] >= 0,
               f'{r.id} runtime {t.get("runtime")!r}')
        expect(t.get('name') == ctx.add and t.get('worker') == ctx.node, f'{r.id} in Flower: {t!r}')
        expect(t.get('result') == repr(r.result), f'{r.id} result {t.get("result")!r}, expected {r.result!r}')
    t = tasks[fail.id]
    expect(t['state'] == states.FAILURE, f'{fail.id} is {t["state"]} in Flower')
    expect('ValueError' in (t.get('exception') or ''), f'{fail.id} exception {t.get("exception")!r}')


@scenario
def task_info(ctx):
    """/api/task/info/<id> describes a finished task."""
    expect(ctx.sent, 'tasks_api sent nothing')
    add = ctx.sent['add'][0]
    info = ctx.get(f'/api/task/info/{add.id}')
    want = {'uuid': add.id, 'name': ctx.add, 'state': states.SUCCESS, 'args': '(0, 100)',
            'kwargs': '{}', 'result': '100', 'worker': ctx.node}
    got = {k: info.get(k) for k in want}
    expect(got == want, f'task info {got!r}, expected {want!r}')
    for key in ('received', 'started', 'succeeded', 'timestamp', 'runtime'):
        expect(isinstance(info.get(key), float), f'task info {key} is {info.get(key)!r}')
    expect(info['received'] <= info['started'] <= info['succeeded'], f'task info times {info!r}')
    fail = ctx.sent['fail']
    info = ctx.get(f'/api/task/info/{fail.id}')
    expect(info.get('state') == states.FAILURE and 'ValueError' in (info.get('exception') or '')
           and 'ValueError' in (info.get('traceback') or ''), f'failed task info {info!r}')


@scenario
def events_dump(ctx):
    """`celery events --dump` prints the task's events."""
    replies = ctx.app.control.enable_events(destination=[ctx.node], reply=True, timeout=3)
    expect(replies and ctx.node in replies[0], f'enable_events replied {replies!r}')
    with tempfile.TemporaryFile('w+') as out:
        dump = subprocess.Popen([sys.executable, '-m', 'celery', '-A', 'tasks', 'events', '--dump'],
                                cwd=HERE, env=ctx.env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            def text():
                out.seek(0)
                return out.read()
            # The dump wakes the workers up (a `heartbeat` broadcast): once a
            # heartbeat from NODE is printed it is consuming.
            wait_for(lambda: f'{ctx.node} [' in text() and 'heartbeat' in text(), 10, 0.2)
            r = ctx.send(ctx.add, 40, 2)
            expect(r.get(timeout=RESULT_TIMEOUT) == 42, f'{ctx.add} returned {r.result!r}')
            line = wait_for(lambda: next((ln for ln in text().splitlines()
                                          if r.id in ln and 'task succeeded' in ln), None), 10, 0.2)
        finally:
            os.killpg(dump.pid, signal.SIGTERM)
            try:
                dump.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(dump.pid, signal.SIGKILL)
                dump.wait()
        printed = text()
    expect(line, f'no "task succeeded" line for {r.id} in:\n{printed[-2000:]}')
    expect(line.startswith(f'{ctx.node} [') and f'{ctx.add}({r.id})' in line and 'result=42' in line,
           f'dump line {line!r}')
    received = [ln for ln in printed.splitlines() if r.id in ln and 'task received' in ln]
    expect(received and 'args=(40, 2)' in received[0], f'task received lines {received!r}')


# -- runner ----------------------------------------------------------------------

def run(ctx, selected):
    passed = failed = 0
    for fn in SCENARIOS:
        if selected and fn.__name__ not in selected:
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


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--node', required=True, help='nodename of the worker under test')
    p.add_argument('--queue', required=True, help='the queue it consumes')
    p.add_argument('--add', default='demo.add')
    p.add_argument('--fail', default='demo.fail', help='a task raising ValueError(message)')
    p.add_argument('--broker', default=os.environ.get('CELERIAC_TEST_BROKER',
                                                      'amqp://guest:guest@127.0.0.1:5672//'))
    p.add_argument('--backend', default=os.environ.get('CELERIAC_TEST_BACKEND',
                                                       'redis://127.0.0.1:6379/0'))
    p.add_argument('scenarios', nargs='*', help='run only these scenarios')
    opts = p.parse_args(argv)
    unknown = set(opts.scenarios) - {fn.__name__ for fn in SCENARIOS}
    if unknown:
        p.error(f'unknown scenarios {sorted(unknown)}')
    return opts


def main(argv):
    opts = parse(argv)
    ctx = Context(opts)
    # A SIGTERM (e.g. from a test harness) must still stop Flower.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    failed = 1
    replies = None
    try:
        replies = ctx.app.control.disable_events(destination=[ctx.node], reply=True, timeout=3)
        if not replies:
            print(f'FAIL setup: {ctx.node} did not answer disable_events', flush=True)
            print('0 passed, 1 failed', flush=True)
        else:
            ctx.start_flower()
            failed = run(ctx, set(opts.scenarios))
            if failed:
                print(f'-- Flower log tail:\n{ctx.flower_tail()}', flush=True)
    except Exception as exc:  # noqa: BLE001
        print(f'FAIL setup: {exc}', flush=True)
        print('0 passed, 1 failed', flush=True)
    finally:
        ctx.stop_flower()
        if replies:
            # Leave task events as they were before (Flower turned them on).
            was_on = replies[0].get(ctx.node) == {'ok': 'task events disabled'}
            switch = ctx.app.control.enable_events if was_on else ctx.app.control.disable_events
            switch(destination=[ctx.node], reply=True, timeout=3)
        ctx.app.close()
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main(sys.argv[1:])
