#!/usr/bin/env python3
"""Check a worker's remote control, revocation and events from Python Celery.

Usage::

    drive_control.py --node NODE --queue QUEUE [--peer PEER]
                     [--add demo.add] [--sleep demo.sleep] [--fail demo.fail]
                     [--cpu demo.cpu] [--flaky demo.flaky] [--cpu-iterations N]
                     [--expect-sync-terminate-error] [--shutdown]
                     [scenario ...]

The broker and the (Redis) result backend come from ``CELERIAC_TEST_BROKER``
and ``CELERIAC_TEST_BACKEND``.  The worker named ``NODE`` must consume
``QUEUE`` and serve the five tasks named by the options (defaults: the Rust
worker's ``demo.*`` names; a Python worker running ``tasks.py`` serves them as
``interop.add``, ``interop.sleep``, ``interop.value_error``, ``interop.cpu``
and ``interop.flaky``).  This process is a plain Celery application
(``celery inspect``/``celery control`` are also run as subprocesses from this
directory with ``-A tasks``): nothing in it knows which worker it talks to, so
every check here must also pass against a real Python Celery 5.7 worker.

``--peer PEER`` names a second worker that must answer a broadcast ``ping``
(a mixed fleet).  ``--expect-sync-terminate-error`` enables the scenario in
which terminating a running *synchronous* task must be refused with an error
reply (the Rust worker cannot kill a thread; Python's prefork pool can kill
its child, so leave the flag off there).  ``--shutdown`` adds a last scenario
that shuts the worker down.

Output: one ``ok <name>``, ``skip <name>: <why>`` or ``FAIL <name>: <detail>``
line per scenario, then ``N passed, M failed`` (``, K skipped`` when any
were).  Exit status 1 if any scenario failed.
"""

import argparse
import os
import subprocess
import sys
import threading
import time
import traceback
import uuid
from datetime import datetime, timezone
from functools import partial

from celery import Celery, states
from celery.exceptions import TaskRevokedError

HERE = os.path.dirname(os.path.abspath(__file__))
RESULT_TIMEOUT = 20
SCENARIOS = []


class Mismatch(Exception):
    """A scenario saw something other than what it expected."""


class Skip(Exception):
    """A scenario cannot run against this worker (the reason says why)."""


def scenario(fn=None, *, flag=None):
    """Registers a scenario; ``flag`` names the option that enables it."""
    def register(fn):
        fn.flag = flag
        SCENARIOS.append(fn)
        return fn
    return register(fn) if fn is not None else register


def expect(condition, detail):
    if not condition:
        raise Mismatch(detail)


def expect_type(value, types, what):
    # bool is an int in Python: a JSON true where a number belongs is wrong.
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in _tuple(types))
    expect(ok, f'{what} is {value!r} ({type(value).__name__}), expected {_names(types)}')


def _tuple(types):
    return types if isinstance(types, tuple) else (types,)


def _names(types):
    return ' or '.join(t.__name__ for t in _tuple(types))


def wait_for(probe, timeout, interval=0.2):
    """Calls ``probe`` until it returns something true; returns that, or the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class Context:
    def __init__(self, opts):
        self.opts = opts
        self.node, self.queue, self.peer = opts.node, opts.queue, opts.peer
        self.add, self.sleep, self.fail = opts.add, opts.sleep, opts.fail
        self.cpu, self.flaky = opts.cpu, opts.flaky
        self.broker, self.backend = opts.broker, opts.backend
        self.timeout = opts.timeout
        self.app = Celery('driver', broker=self.broker, backend=self.backend)
        self.app.conf.task_routes = {
            name: {'queue': self.queue}
            for name in (self.add, self.sleep, self.fail, self.cpu, self.flaky)
        }

    def send(self, name, *args, **options):
        return self.app.send_task(name, args=args, **options)

    # -- remote control ------------------------------------------------------

    def inspect(self, method, *args, **kwargs):
        """The node's reply to an inspect command (``Mismatch`` if none came)."""
        i = self.app.control.inspect(destination=[self.node], timeout=self.timeout)
        reply = getattr(i, method)(*args, **kwargs)
        if not reply or self.node not in reply:
            raise Mismatch(f'inspect {method}: no reply from {self.node} (got {reply!r})')
        return reply[self.node]

    def control(self, method, *args, **kwargs):
        """The node's reply to ``app.control.<method>(..., reply=True)``."""
        replies = getattr(self.app.control, method)(
            *args, destination=[self.node], reply=True, timeout=self.timeout, **kwargs)
        for reply in replies or []:
            if self.node in reply:
                return reply[self.node]
        raise Mismatch(f'control {method}: no reply from {self.node} (got {replies!r})')

    def cli(self, *argv):
        """Runs ``celery -A tasks ARGV`` from this directory; (exit status, output)."""
        env = dict(os.environ, CELERIAC_TEST_BROKER=self.broker, CELERIAC_TEST_BACKEND=self.backend)
        proc = subprocess.run([sys.executable, '-m', 'celery', '-A', 'tasks', *argv],
                              cwd=HERE, env=env, capture_output=True, text=True, timeout=60)
        return proc.returncode, proc.stdout + proc.stderr

    def wait_active(self, task_id, timeout=10):
        """The ``active`` entry for ``task_id`` once the node runs it."""
        def probe():
            return next((t for t in self.inspect('active') if t.get('id') == task_id), None)
        entry = wait_for(probe, timeout)
        expect(entry, f'{task_id} never listed by active within {timeout} s')
        return entry

    def wait_state(self, result, wanted, timeout):
        return wait_for(lambda: result.state in wanted, timeout, 0.1)

    def stats(self):
        return self.inspect('stats')


def ok_reply(reply, text, what):
    expect(reply == {'ok': text}, f'{what} replied {reply!r}, expected {{"ok": {text!r}}}')


REQUEST_INFO_KEYS = {'id', 'name', 'args', 'kwargs', 'type', 'hostname', 'time_start',
                     'acknowledged', 'delivery_info', 'worker_pid'}


def check_request_info(ctx, info, task_id, name, args, what):
    expect(isinstance(info, dict), f'{what} is {info!r}')
    missing = REQUEST_INFO_KEYS - set(info)
    expect(not missing, f'{what} lacks {sorted(missing)}: {info!r}')
    expect(info['id'] == task_id, f'{what} id {info["id"]!r}, expected {task_id}')
    expect(info['name'] == name and info['type'] == name, f'{what} name/type: {info!r}')
    expect(info['args'] == args, f'{what} args {info["args"]!r}, expected {args!r}')
    expect(info['kwargs'] == {}, f'{what} kwargs {info["kwargs"]!r}')
    expect(info['hostname'] == ctx.node, f'{what} hostname {info["hostname"]!r}')
    expect_type(info['acknowledged'], bool, f'{what} acknowledged')
    di = info['delivery_info']
    expect(isinstance(di, dict) and {'exchange', 'routing_key', 'priority', 'redelivered'} <= set(di),
           f'{what} delivery_info {di!r}')
    expect(di['routing_key'] == ctx.queue, f'{what} delivery_info.routing_key {di["routing_key"]!r}')
    expect_type(di['exchange'], str, f'{what} delivery_info.exchange')
    expect(di['redelivered'] is False, f'{what} delivery_info.redelivered {di["redelivered"]!r}')


# -- ping --------------------------------------------------------------------

@scenario
def ping(ctx):
    ok_reply(ctx.inspect('ping'), 'pong', 'inspect ping')
    replies = ctx.app.control.ping(destination=[ctx.node], timeout=ctx.timeout)
    expect(replies == [{ctx.node: {'ok': 'pong'}}], f'control.ping replied {replies!r}')


@scenario
def ping_broadcast(ctx):
    # No destination: every worker on the broker answers; wait the whole timeout.
    replies = ctx.app.control.ping(timeout=ctx.timeout)
    by_node = {node: value for reply in replies for node, value in reply.items()}
    wanted = [ctx.node] + ([ctx.peer] if ctx.peer else [])
    for node in wanted:
        expect(by_node.get(node) == {'ok': 'pong'}, f'{node} missing from broadcast ping: {replies!r}')


@scenario
def cli_inspect_ping(ctx):
    code, out = ctx.cli('inspect', 'ping', '-d', ctx.node, '--timeout', '3')
    expect(code == 0, f'celery inspect ping exited {code}: {out!r}')
    expect(f'->  {ctx.node}: OK' in out and 'pong' in out and '1 node online.' in out,
           f'celery inspect ping printed {out!r}')


# -- stats, registered, active_queues ---------------------------------------

@scenario
def stats_shape(ctx):
    s = ctx.stats()
    for key, types in (('total', dict), ('pid', int), ('clock', str), ('uptime', int),
                       ('pool', dict), ('prefetch_count', int), ('rusage', dict), ('broker', dict)):
        expect(key in s, f'stats lacks {key!r}: {s!r}')
        expect_type(s[key], types, f'stats[{key!r}]')
    expect(s['clock'].isdigit(), f'stats clock {s["clock"]!r} is not an integer string')
    expect_type(s['pool'].get('max-concurrency'), int, 'stats pool.max-concurrency')
    expect(s['pool']['max-concurrency'] >= 1, f'stats pool {s["pool"]!r}')
    for key in ('utime', 'stime', 'maxrss'):
        expect_type(s['rusage'].get(key), (int, float), f'stats rusage.{key}')
    expect_type(s['broker'].get('hostname'), str, 'stats broker.hostname')
    for name, count in s['total'].items():
        expect_type(count, int, f'stats total[{name!r}]')


@scenario
def stats_total_counts(ctx):
    before = ctx.stats()['total'].get(ctx.add, 0)
    results = [ctx.send(ctx.add, i, i) for i in range(3)]
    got = [r.get(timeout=RESULT_TIMEOUT) for r in results]
    expect(got == [0, 2, 4], f'{ctx.add} returned {got!r}')
    after = ctx.stats()['total'].get(ctx.add, 0)
    expect(after == before + 3, f'stats total[{ctx.add!r}] went {before} -> {after}, expected +3')


@scenario
def registered(ctx):
    names = ctx.inspect('registered')
    expect(isinstance(names, list) and all(isinstance(n, str) for n in names),
           f'registered replied {names!r}')
    # Entries are "name" or "name [attr=value ...]".
    bare = {n.split(' ', 1)[0] for n in names}
    for name in (ctx.add, ctx.sleep, ctx.fail):
        expect(name in bare, f'{name} not in registered: {names!r}')
    expect(not any(n.startswith('celery.') for n in bare), f'builtins listed: {names!r}')


@scenario
def active_queues(ctx):
    queues = ctx.inspect('active_queues')
    expect(isinstance(queues, list), f'active_queues replied {queues!r}')
    mine = [q for q in queues if isinstance(q, dict) and q.get('name') == ctx.queue]
    expect(len(mine) == 1, f'{ctx.queue} not (once) in active_queues: {queues!r}')
    q = mine[0]
    keys = {'name', 'exchange', 'routing_key', 'durable', 'exclusive', 'auto_delete', 'no_ack',
            'queue_arguments', 'binding_arguments', 'consumer_arguments', 'bindings', 'alias'}
    expect(keys <= set(q), f'queue lacks {sorted(keys - set(q))}: {q!r}')
    ex = q['exchange']
    expect(isinstance(ex, dict) and {'name', 'type', 'durable', 'auto_delete'} <= set(ex),
           f'queue exchange {ex!r}')
    # The queue Celery creates for -Q NAME: a durable queue bound to the
    # durable direct exchange NAME with routing key NAME.
    expect((ex['name'], ex['type'], q['routing_key']) == (ctx.queue, 'direct', ctx.queue),
           f'exchange/routing key {ex!r} {q["routing_key"]!r}')
    expect((q['durable'], q['exclusive'], q['auto_delete'], q['no_ack']) == (True, False, False, False),
           f'flags durable/exclusive/auto_delete/no_ack: {q!r}')
    expect(isinstance(q['bindings'], list), f'bindings {q["bindings"]!r}')


# -- active, scheduled, reserved, query_task --------------------------------

@scenario
def active_and_query_task(ctx):
    r = ctx.send(ctx.sleep, 3)
    info = ctx.wait_active(r.id)
    check_request_info(ctx, info, r.id, ctx.sleep, [3], 'active entry')
    expect_type(info['time_start'], float, 'active time_start')
    expect(abs(info['time_start'] - time.time()) < 30, f'time_start {info["time_start"]!r} is not now')
    # Celery acks a task's message when it starts (early ack, its default);
    # a worker with late acks (Celeriac's default) has not acked it yet.
    acked = not ctx.opts.acks_late
    expect(info['acknowledged'] is acked,
           f'active acknowledged {info["acknowledged"]!r}, expected {acked!r}')
    expect_type(info['worker_pid'], int, 'active worker_pid')
    expect_type(info['delivery_info']['priority'], (int, type(None)), 'delivery_info.priority')

    # safe=True (what Flower sends): args and kwargs as the client's repr strings.
    safe = next((t for t in ctx.inspect('active', safe=True) if t.get('id') == r.id), None)
    expect(safe and safe['args'] == '(3,)' and safe['kwargs'] == '{}',
           f'active(safe=True) entry {safe!r}, expected args "(3,)" kwargs "{{}}"')

    q = ctx.inspect('query_task', r.id)
    expect(isinstance(q, dict) and list(q) == [r.id], f'query_task replied {q!r}')
    expect(isinstance(q[r.id], list) and len(q[r.id]) == 2 and q[r.id][0] == 'active',
           f'query_task entry {q[r.id]!r}')
    check_request_info(ctx, q[r.id][1], r.id, ctx.sleep, [3], 'query_task info')
    missing = ctx.inspect('query_task', str(uuid.uuid4()))
    expect(missing == {}, f'query_task of an unknown id replied {missing!r}')
    expect(r.get(timeout=RESULT_TIMEOUT) == 3, f'{ctx.sleep}(3) returned {r.result!r}')


def wait_scheduled(ctx, task_id, timeout=10):
    def probe():
        return next((e for e in ctx.inspect('scheduled')
                     if isinstance(e, dict) and (e.get('request') or {}).get('id') == task_id), None)
    entry = wait_for(probe, timeout)
    expect(entry, f'{task_id} never listed by scheduled within {timeout} s')
    return entry


@scenario
def scheduled_and_reserved(ctx):
    sent = time.time()
    r = ctx.send(ctx.add, 1, 2, countdown=30)
    try:
        entry = wait_scheduled(ctx, r.id)
        expect(set(entry) == {'eta', 'priority', 'request'}, f'scheduled entry {entry!r}')
        expect_type(entry['eta'], str, 'scheduled eta')
        eta = datetime.fromisoformat(entry['eta'])
        expect(eta.tzinfo is not None, f'eta {entry["eta"]!r} has no UTC offset')
        expect(abs(eta.timestamp() - (sent + 30)) < 5, f'eta {entry["eta"]!r} is not now + 30 s')
        expect_type(entry['priority'], int, 'scheduled priority')
        info = entry['request']
        check_request_info(ctx, info, r.id, ctx.add, [1, 2], 'scheduled request')
        expect(info['time_start'] is None, f'scheduled time_start {info["time_start"]!r}')
        expect(info['acknowledged'] is False, 'a scheduled (ETA) task is acknowledged before it runs')

        q = ctx.inspect('query_task', r.id)
        expect(isinstance(q, dict) and r.id in q and q[r.id][0] == 'scheduled',
               f'query_task of a scheduled task replied {q!r}')

        reserved = ctx.inspect('reserved')
        expect(isinstance(reserved, list), f'reserved replied {reserved!r}')
        expect(all(t.get('id') != r.id for t in reserved),
               f'the ETA task is listed as reserved: {reserved!r}')
    finally:
        ctx.app.control.revoke(r.id, destination=[ctx.node], reply=True, timeout=ctx.timeout)


# -- revocation ----------------------------------------------------------------

def check_revoked(ctx, r, what):
    expect(ctx.wait_state(r, {states.REVOKED}, 5), f'{what}: state {r.state} after revoke, expected REVOKED')
    expect(isinstance(r.result, TaskRevokedError), f'{what}: result {r.result!r}')


@scenario
def revoke_scheduled(ctx):
    countdown = 3
    sent = time.monotonic()
    r = ctx.send(ctx.add, 5, 5, countdown=countdown)
    wait_scheduled(ctx, r.id)
    reply = ctx.control('revoke', r.id)
    expect(reply == {'ok': f"tasks {{'{r.id}'}} flagged as revoked"},
           f'revoke replied {reply!r}')
    revoked = ctx.inspect('revoked')
    expect(isinstance(revoked, list) and r.id in revoked, f'{r.id} not in revoked: {revoked!r}')
    # Celery >= 5.6.2 stores REVOKED as soon as the command arrives.
    check_revoked(ctx, r, 'revoked ETA task')
    time.sleep(max(0.0, sent + countdown + 3 - time.monotonic()))
    expect(r.state == states.REVOKED, f'the revoked ETA task ended {r.state} ({r.result!r})')
    gone = wait_for(lambda: all((e.get('request') or {}).get('id') != r.id
                                for e in ctx.inspect('scheduled')), 3)
    expect(gone, f'{r.id} still scheduled after its ETA')


@scenario
def revoke_queued(ctx):
    # Fill every pool slot with sleeps, queue an add behind them, revoke it.
    slots = ctx.stats()['pool']['max-concurrency']
    if slots > 32:
        raise Skip(f'max-concurrency {slots}: too many slots to fill deterministically')
    sleepers = [ctx.send(ctx.sleep, 3) for _ in range(slots)]
    busy = wait_for(lambda: len([t for t in ctx.inspect('active')
                                 if t['id'] in {s.id for s in sleepers}]) == slots, 10)
    expect(busy, f'{slots} sleeps never all active')
    r = ctx.send(ctx.add, 7, 7)
    reply = ctx.control('revoke', r.id)
    expect(reply == {'ok': f"tasks {{'{r.id}'}} flagged as revoked"}, f'revoke replied {reply!r}')
    check_revoked(ctx, r, 'revoked queued task')
    for s in sleepers:
        s.get(timeout=RESULT_TIMEOUT)
    time.sleep(1.5)
    expect(r.state == states.REVOKED, f'the revoked queued task ended {r.state} ({r.result!r})')
    active = ctx.inspect('active')
    expect(all(t['id'] != r.id for t in active), f'the revoked task runs: {active!r}')


def python_threads_pool(ctx):
    return str(ctx.stats()['pool'].get('implementation', '')).endswith('thread:TaskPool')


@scenario
def terminate_running(ctx):
    if python_threads_pool(ctx):
        # Celery's threads pool cannot kill a thread: it replies {"error":
        # "NotImplementedError(\"<class '...thread.TaskPool'> does not implement kill_job\")"}.
        raise Skip('the Python threads pool cannot terminate tasks')
    r = ctx.send(ctx.sleep, 30)
    ctx.wait_active(r.id)
    started = time.monotonic()
    reply = ctx.control('revoke', r.id, terminate=True)
    expect(reply == {'ok': f'terminate: {r.id}'}, f'revoke(terminate=True) replied {reply!r}')
    expect(ctx.wait_state(r, {states.REVOKED, states.SUCCESS, states.FAILURE}, 15),
           f'still {r.state} 15 s after terminate')
    elapsed = time.monotonic() - started
    expect(r.state == states.REVOKED, f'terminated task ended {r.state} ({r.result!r})')
    expect(isinstance(r.result, TaskRevokedError), f'terminated task result {r.result!r}')
    expect(elapsed < 15, f'terminate took {elapsed:.1f} s')
    expect(r.id in ctx.inspect('revoked'), f'{r.id} not in revoked')
    gone = wait_for(lambda: all(t['id'] != r.id for t in ctx.inspect('active')), 5)
    expect(gone, f'{r.id} still active after terminate')


@scenario
def terminate_unknown(ctx):
    reply = ctx.control('revoke', str(uuid.uuid4()), terminate=True)
    ok_reply(reply, 'terminate: tasks unknown', 'revoke(terminate=True) of an unknown id')


@scenario(flag='expect_sync_terminate_error')
def terminate_sync_refused(ctx):
    r = ctx.send(ctx.cpu, ctx.opts.cpu_iterations)
    try:
        ctx.wait_active(r.id)
    except Mismatch:
        raise Mismatch(f'{ctx.cpu} was never seen running (state {r.state}); '
                       f'raise --cpu-iterations ({ctx.opts.cpu_iterations})') from None
    reply = ctx.control('revoke', r.id, terminate=True)
    expect(isinstance(reply, dict) and isinstance(reply.get('error'), str) and 'ok' not in reply,
           f'terminating a running sync task replied {reply!r}, expected {{"error": ...}}')
    # The task cannot be stopped, so it runs on and succeeds (as under
    # Celery's threads pool, which replies a NotImplementedError here).
    expect(ctx.wait_state(r, states.READY_STATES, 120), f'{ctx.cpu} still {r.state} after 120 s')
    expect(r.state == states.SUCCESS, f'{ctx.cpu} ended {r.state} ({r.result!r}), expected SUCCESS')


# -- conf, clock, report -------------------------------------------------------

@scenario
def conf_clock_report(ctx):
    conf = ctx.inspect('conf')
    expect(isinstance(conf, dict), f'conf replied {conf!r}')
    clock = ctx.inspect('clock')
    expect(isinstance(clock, dict) and set(clock) == {'clock'}, f'clock replied {clock!r}')
    expect_type(clock['clock'], int, 'clock')
    later = ctx.inspect('clock')['clock']
    expect(later > clock['clock'], f'clock did not advance: {clock["clock"]} then {later}')
    report = ctx.inspect('report')
    expect(isinstance(report, dict) and set(report) == {'ok'} and isinstance(report['ok'], str),
           f'report replied {report!r}')


# -- rate and time limits --------------------------------------------------------

@scenario
def rate_limit(ctx):
    ok_reply(ctx.control('rate_limit', ctx.add, '10/m'), 'new rate limit set successfully', 'rate_limit 10/m')
    ok_reply(ctx.control('rate_limit', ctx.add, 0), 'rate limit disabled successfully', 'rate_limit 0')
    reply = ctx.control('rate_limit', 'no.such.task', '1/s')
    expect(reply == {'error': 'unknown task'}, f'rate_limit of an unknown task replied {reply!r}')
    reply = ctx.control('rate_limit', ctx.add, 'fast')
    expect(isinstance(reply, dict) and str(reply.get('error', '')).startswith('Invalid rate limit string'),
           f'rate_limit "fast" replied {reply!r}')
    expect(ctx.send(ctx.add, 1, 1).get(timeout=RESULT_TIMEOUT) == 2, 'add after rate_limit')


@scenario
def cli_control_rate_limit(ctx):
    try:
        code, out = ctx.cli('control', 'rate_limit', ctx.add, '10/m', '-d', ctx.node, '--timeout', '3')
        expect(code == 0, f'celery control rate_limit exited {code}: {out!r}')
        expect(f'->  {ctx.node}: OK' in out and 'new rate limit set successfully' in out,
               f'celery control rate_limit printed {out!r}')
    finally:
        ctx.app.control.rate_limit(ctx.add, 0, destination=[ctx.node], reply=True, timeout=ctx.timeout)


@scenario
def time_limit(ctx):
    ok_reply(ctx.control('time_limit', ctx.add, soft=10, hard=20), 'time limits set successfully',
             'time_limit soft=10 hard=20')
    reply = ctx.control('time_limit', 'no.such.task', soft=1, hard=2)
    expect(reply == {'error': 'unknown task'}, f'time_limit of an unknown task replied {reply!r}')
    expect(ctx.send(ctx.add, 2, 2).get(timeout=RESULT_TIMEOUT) == 4, 'add after time_limit')


# -- consumers -----------------------------------------------------------------

def queue_names(ctx):
    return {q.get('name') for q in ctx.inspect('active_queues')}


@scenario
def add_and_cancel_consumer(ctx):
    extra = f'{ctx.queue}.extra.{uuid.uuid4().hex[:8]}'
    try:
        ok_reply(ctx.control('add_consumer', extra), f'add consumer {extra}', 'add_consumer')
        expect(wait_for(lambda: extra in queue_names(ctx), 5), f'{extra} never in active_queues')
        got = ctx.send(ctx.add, 20, 22, queue=extra).get(timeout=RESULT_TIMEOUT)
        expect(got == 42, f'{ctx.add} on {extra} returned {got!r}')
        ok_reply(ctx.control('cancel_consumer', extra), f'no longer consuming from {extra}',
                 'cancel_consumer')
        expect(wait_for(lambda: extra not in queue_names(ctx), 5), f'{extra} still in active_queues')
        expect(ctx.queue in queue_names(ctx), f'{ctx.queue} left active_queues')
    finally:
        ctx.app.control.cancel_consumer(extra, destination=[ctx.node], reply=True, timeout=ctx.timeout)
        with ctx.app.connection_for_write() as conn:
            channel = conn.default_channel
            for delete in (channel.queue_delete, channel.exchange_delete):
                try:
                    delete(extra)
                except Exception:  # noqa: BLE001 -- best-effort clean-up
                    channel = conn.channel()


# -- pool ----------------------------------------------------------------------

def pool_size(pool):
    """(max-concurrency, number of processes or None)."""
    procs = pool.get('processes')
    return pool.get('max-concurrency'), len(procs) if isinstance(procs, list) else None


@scenario
def pool_grow_shrink(ctx):
    pool = ctx.stats()['pool']
    limit, procs = pool_size(pool)
    reply = ctx.control('pool_grow', 2)
    if 'error' in (reply or {}) and python_threads_pool(ctx):
        # Celery's own threads pool has no grow(): it replies
        # {"error": "AttributeError(\"'TaskPool' object has no attribute 'grow'\")"}.
        raise Skip(f'the Python threads pool cannot grow: {reply!r}')
    ok_reply(reply, 'pool will grow', 'pool_grow 2')
    ok_reply(ctx.control('pool_shrink', 1), 'pool will shrink', 'pool_shrink 1')

    # Python's prefork pool keeps max-concurrency at its start-up limit and
    # shows the change in its process list; a pool that reports no
    # processes must show it in max-concurrency.
    def grown():
        now_limit, now_procs = pool_size(ctx.stats()['pool'])
        return now_limit == limit + 1 or (procs is not None and now_procs == procs + 1)
    expect(wait_for(grown, 5, 0.3), f'pool {pool!r} -> {ctx.stats()["pool"]!r} after grow 2, shrink 1')
    ok_reply(ctx.control('pool_shrink', 1), 'pool will shrink', 'pool_shrink 1 (restore)')
    restored = wait_for(lambda: pool_size(ctx.stats()['pool']) == (limit, procs), 5, 0.3)
    expect(restored, f'pool not back to {limit} after shrinking: {ctx.stats()["pool"]!r}')


@scenario
def autoscale(ctx):
    # A worker started without --autoscale: Celery 5.7 replies
    # {"error": "ValueError('Autoscale not enabled')"}; with it, {"ok": "autoscale now ..."}.
    reply = ctx.control('autoscale', 4, 1)
    expect(isinstance(reply, dict) and len(reply) == 1 and set(reply) <= {'ok', 'error'}
           and isinstance(next(iter(reply.values())), str), f'autoscale replied {reply!r}')


# -- events switches, heartbeat ----------------------------------------------------

@scenario
def events_toggle(ctx):
    first = ctx.control('enable_events')
    expect(first in ({'ok': 'task events enabled'}, {'ok': 'task events already enabled'}),
           f'enable_events replied {first!r}')
    try:
        ok_reply(ctx.control('enable_events'), 'task events already enabled', 'enable_events again')
        ok_reply(ctx.control('disable_events'), 'task events disabled', 'disable_events')
        ok_reply(ctx.control('disable_events'), 'task events already disabled', 'disable_events again')
    finally:
        if first == {'ok': 'task events already enabled'}:
            ctx.control('enable_events')


@scenario
def heartbeat_reply(ctx):
    reply = ctx.app.control.heartbeat(destination=[ctx.node], reply=True, timeout=ctx.timeout)
    expect(reply == [{ctx.node: None}], f'heartbeat replied {reply!r}, expected [{{node: None}}]')


# -- events ------------------------------------------------------------------------

class EventCollector:
    """An ``app.events.Receiver`` in a thread; keeps every event (not localized)."""

    def __init__(self, app):
        self.events = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.conn = app.connection_for_read()
        self.recv = app.events.Receiver(self.conn, handlers={'*': self.on_event})
        # Keep the timestamps as sent (the Receiver shifts them by utcoffset).
        self.recv.event_from_message = partial(type(self.recv).event_from_message, self.recv,
                                               localize=False)
        consume_ready = self.recv.on_consume_ready

        def on_consume_ready(*args, **kwargs):
            consume_ready(*args, **kwargs)
            self.ready.set()
        self.recv.on_consume_ready = on_consume_ready
        self.error = None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        try:
            for _ in self.recv.consume(limit=None, timeout=None, wakeup=True):
                pass
        except Exception as exc:  # noqa: BLE001 -- reported by the scenario
            self.error = exc
            self.ready.set()

    def on_event(self, event):
        with self.lock:
            self.events.append(dict(event))

    def __enter__(self):
        self.thread.start()
        if not self.ready.wait(10) or self.error:
            raise Mismatch(f'the event receiver did not start: {self.error!r}')
        return self

    def __exit__(self, *exc):
        self.recv.should_stop = True
        self.thread.join(5)
        self.conn.release()

    def snapshot(self, hostname=None):
        with self.lock:
            return [e for e in self.events if hostname is None or e.get('hostname') == hostname]

    def wait(self, probe, timeout):
        return wait_for(lambda: probe(self.snapshot()), timeout, 0.1)


def check_standard_fields(ev, node, pid):
    what = ev.get('type')
    # utcoffset: Celery 5.7 sends a float (time.timezone / 3600, e.g. 0.0 or
    # -5.5); older Celery sent a floor-divided int.  Both are numbers.
    for key, types in (('hostname', str), ('timestamp', float), ('utcoffset', (int, float)),
                       ('pid', int), ('clock', int), ('type', str)):
        expect(key in ev, f'{what} event lacks {key}: {ev!r}')
        expect_type(ev[key], types, f'{what} {key}')
    expect(ev['hostname'] == node, f'{what} hostname {ev["hostname"]!r}')
    expect(ev['pid'] == pid, f'{what} pid {ev["pid"]} but stats pid {pid}')
    drift = abs(ev['timestamp'] - ev['local_received'])
    expect(drift < 16, f'{what} timestamp {ev["timestamp"]} is {drift:.1f} s from now')


SOFTWARE_FIELDS = (('sw_ident', str), ('sw_ver', str), ('sw_sys', str))


def check_worker_event(ev, what):
    for key, types in (('freq', float), ('active', int), ('processed', int), ('loadavg', list),
                       *SOFTWARE_FIELDS):
        expect(key in ev, f'{what} lacks {key}: {ev!r}')
        expect_type(ev[key], types, f'{what} {key}')
    expect(len(ev['loadavg']) == 3 and all(isinstance(x, (int, float)) for x in ev['loadavg']),
           f'{what} loadavg {ev["loadavg"]!r}')


@scenario
def events(ctx):
    pid = ctx.stats()['pid']
    first = ctx.control('enable_events')
    expect(first in ({'ok': 'task events enabled'}, {'ok': 'task events already enabled'}),
           f'enable_events replied {first!r}')
    try:
        with EventCollector(ctx.app) as col:
            started = time.time()
            add = ctx.send(ctx.add, 2, 3)
            fail = ctx.send(ctx.fail, 'boom')
            flaky = ctx.send(ctx.flaky, 1)
            for r in (add, fail, flaky):
                r.get(timeout=RESULT_TIMEOUT, propagate=False)
            expect((add.state, fail.state, flaky.state) == (states.SUCCESS, states.FAILURE, states.SUCCESS),
                   f'states {add.state} {fail.state} {flaky.state}')

            def of(evs, task_id, kind):
                return [e for e in evs if e.get('uuid') == task_id and e['type'] == kind]

            def complete(evs):
                evs = [e for e in evs if e.get('hostname') == ctx.node]
                return (of(evs, add.id, 'task-succeeded') and of(evs, fail.id, 'task-failed')
                        and of(evs, flaky.id, 'task-retried') and of(evs, flaky.id, 'task-succeeded')
                        and any(e['type'] == 'worker-heartbeat' and e.get('freq') == 2.0
                                and e['local_received'] > started for e in evs))
            col.wait(complete, 10)
            evs = col.snapshot(ctx.node)
            kinds = sorted({e['type'] for e in evs})
            expect(evs, f'no events from {ctx.node} (from others: {col.snapshot()[:5]!r})')
            for ev in evs:
                check_standard_fields(ev, ctx.node, pid)

            # Heartbeats: the periodic ones (freq 2.0) and the one answering the
            # receiver's wake-up `heartbeat` broadcast (freq 5).
            beats = [e for e in evs if e['type'] == 'worker-heartbeat']
            expect(any(b['freq'] == 2.0 and isinstance(b['freq'], float) for b in beats),
                   f'no periodic heartbeat (freq 2.0): {beats!r} {kinds}')
            expect(any(b['freq'] == 5 for b in beats), f'no wake-up heartbeat (freq 5): {beats!r}')
            for b in beats:
                if b['freq'] == 5:
                    # The answer to `heartbeat`: Celery sends only freq=5 (an
                    # int) and the sw_* fields (no active/processed/loadavg).
                    for key, types in SOFTWARE_FIELDS:
                        expect_type(b.get(key), types, f'wake-up heartbeat {key}')
                else:
                    check_worker_event(b, 'worker-heartbeat')
            clocks = [b['clock'] for b in beats]
            expect(clocks == sorted(set(clocks)), f'heartbeat clocks do not increase: {clocks}')

            def one(task_id, kind, n=1):
                found = of(evs, task_id, kind)
                expect(len(found) == n, f'{len(found)} {kind} events for {task_id} (saw {kinds})')
                return found

            received, = one(add.id, 'task-received')
            want = {'uuid': add.id, 'name': ctx.add, 'args': '(2, 3)', 'kwargs': '{}', 'retries': 0,
                    'root_id': add.id, 'parent_id': None, 'eta': None, 'expires': None}
            got = {k: received.get(k, '<missing>') for k in want}
            expect(got == want, f'task-received {got!r}, expected {want!r}')
            st, = one(add.id, 'task-started')
            done, = one(add.id, 'task-succeeded')
            expect(done.get('result') == '5', f'task-succeeded result {done.get("result")!r}, expected "5"')
            expect_type(done.get('runtime'), float, 'task-succeeded runtime')
            expect(0 <= done['runtime'] < 10, f'runtime {done["runtime"]}')
            expect(received['clock'] < st['clock'] < done['clock'],
                   f'clocks received {received["clock"]} started {st["clock"]} succeeded {done["clock"]}')

            one(fail.id, 'task-received')
            one(fail.id, 'task-started')
            failed, = one(fail.id, 'task-failed')
            exc = failed.get('exception')
            expect(isinstance(exc, str) and 'ValueError' in exc and 'boom' in exc,
                   f'task-failed exception {exc!r}')
            tb = failed.get('traceback')
            expect(isinstance(tb, str) and 'ValueError' in tb, f'task-failed traceback {tb!r}')

            retried, = one(flaky.id, 'task-retried')
            expect(isinstance(retried.get('exception'), str) and retried['exception'],
                   f'task-retried exception {retried.get("exception")!r}')
            expect('traceback' in retried, f'task-retried lacks traceback: {retried!r}')
            again = sorted(one(flaky.id, 'task-received', 2), key=lambda e: e['clock'])
            expect([e.get('retries') for e in again] == [0, 1], f'flaky task-received retries {again!r}')
            expect(isinstance(again[1].get('eta'), str),
                   f'the retry (countdown) has eta {again[1].get("eta")!r}')
            flaky_done, = one(flaky.id, 'task-succeeded')
            # The retry's task-received may come before task-retried (Python's
            # prefork child republishes before the parent reports the retry).
            expect(max(retried['clock'], again[1]['clock']) < flaky_done['clock'],
                   f'flaky clocks retried {retried["clock"]} received {again[1]["clock"]} '
                   f'succeeded {flaky_done["clock"]}')
    finally:
        if first == {'ok': 'task events enabled'}:
            ctx.control('disable_events')


# -- shutdown (last) ---------------------------------------------------------------

@scenario(flag='shutdown')
def shutdown(ctx):
    pid = ctx.stats()['pid']
    with EventCollector(ctx.app) as col:
        reply = ctx.app.control.shutdown(destination=[ctx.node])
        expect(reply is None, f'shutdown (no reply wanted) returned {reply!r}')
        offline = col.wait(lambda evs: [e for e in evs if e.get('hostname') == ctx.node
                                        and e['type'] == 'worker-offline'], 20)
        expect(offline, f'no worker-offline from {ctx.node} within 20 s')
        check_standard_fields(offline[0], ctx.node, pid)
        check_worker_event(offline[0], 'worker-offline')
    replies = ctx.app.control.ping(destination=[ctx.node], timeout=1)
    expect(not replies, f'{ctx.node} still answers ping after shutdown: {replies!r}')


# -- runner ------------------------------------------------------------------------

def run(ctx, selected):
    passed = failed = skipped = 0
    for fn in SCENARIOS:
        if selected and fn.__name__ not in selected:
            continue
        if fn.flag and not getattr(ctx.opts, fn.flag):
            continue
        try:
            fn(ctx)
        except Skip as exc:
            print(f'skip {fn.__name__}: {exc}', flush=True)
            skipped += 1
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
    tail = f', {skipped} skipped' if skipped else ''
    print(f'{passed} passed, {failed} failed{tail}', flush=True)
    return failed


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--node', required=True, help='nodename of the worker under test')
    p.add_argument('--queue', required=True, help='the queue it consumes')
    p.add_argument('--peer', help='a second worker that must answer a broadcast ping')
    p.add_argument('--add', default='demo.add')
    p.add_argument('--sleep', default='demo.sleep')
    p.add_argument('--fail', default='demo.fail', help='a task raising ValueError(message)')
    p.add_argument('--cpu', default='demo.cpu')
    p.add_argument('--flaky', default='demo.flaky', help='flaky(1) retries once, then succeeds')
    p.add_argument('--cpu-iterations', type=int, default=3_000_000_000,
                   help='argument of the cpu task in terminate_sync_refused (runs a few seconds)')
    p.add_argument('--expect-sync-terminate-error', action='store_true',
                   help='terminating a running sync task must be refused with an error reply')
    p.add_argument('--shutdown', action='store_true', help='finally shut the worker down')
    p.add_argument('--acks-late', action='store_true',
                   help='the worker acks after the task (a running task is not acknowledged yet)')
    p.add_argument('--timeout', type=float, default=2.5, help='inspect/control reply timeout (s)')
    p.add_argument('--broker', default=os.environ.get('CELERIAC_TEST_BROKER',
                                                      'amqp://guest:guest@127.0.0.1:5672//'))
    p.add_argument('--backend', default=os.environ.get('CELERIAC_TEST_BACKEND',
                                                       'redis://127.0.0.1:6379/0'))
    p.add_argument('scenarios', nargs='*', help='run only these scenarios')
    opts = p.parse_args(argv)
    known = {fn.__name__ for fn in SCENARIOS}
    unknown = set(opts.scenarios) - known
    if unknown:
        p.error(f'unknown scenarios {sorted(unknown)}; known: {sorted(known)}')
    return opts


def main(argv):
    opts = parse(argv)
    ctx = Context(opts)
    try:
        failed = run(ctx, set(opts.scenarios))
    finally:
        ctx.app.close()
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main(sys.argv[1:])
