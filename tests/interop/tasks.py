"""Python Celery tasks that Celeriac's interop tests call from Rust.

Started by the tests as a real Celery 5.7 worker::

    celery -A tasks worker -Q <queue> -P threads -c 8

with ``CELERIAC_TEST_BROKER`` naming the broker, ``CELERIAC_TEST_BACKEND`` the
result backend (default ``rpc://``; ``django-db+postgresql://...`` sets up
``django_results`` and uses ``django-db``), ``CELERIAC_TEST_RESULT_EXPIRES``
(optional) ``result_expires`` in seconds and ``CELERIAC_TEST_ROUTES``
(optional) ``task_routes`` as JSON.

With ``CELERIAC_TEST_SUBSCRIBE`` set to ``<queue> <exchange> <pattern>``
the worker's queue is a subscriber of a topic exchange (durable fan-out); with
``CELERIAC_TEST_BROADCAST`` set to a name, ``task_queues`` holds
``Broadcast(name)``. Either way ``events.order_created`` appends each order
id it handles to the Redis list ``CELERIAC_TEST_EVENTS_KEY`` at
``CELERIAC_TEST_REDIS``.

With ``CELERIAC_TEST_SECURITY`` naming a directory of keys and
certificates (``make_certs.py``), the app signs its tasks and results with
``python.key`` and accepts only messages signed by a certificate in
``store/`` (``app.setup_security()``).

With ``CELERIAC_BENCH_RUNS_FILE`` set, each task run appends a byte to that
file (the benchmark's count of tasks run).

With ``CELERIAC_TEST_OTEL=1`` the app is traced with
``opentelemetry-instrumentation-celery`` (the SDK's tracer, no exporter):
``interop.trace_id`` then returns the trace id its run continues.

``interop.sleep``, ``interop.value_error`` and ``interop.cpu`` are the Python
twins of the Rust worker's ``demo.sleep``, ``demo.fail`` and ``demo.cpu``: the
remote-control and Flower checks (``drive_control.py``, ``flower_check.py``)
are validated against a Python worker running them.
"""

import json
import os
import threading
import time
from decimal import Decimal
from uuid import UUID

from celery import Celery

from django_results.setup import celery_backend

app = Celery(
    'interop',
    broker=os.environ.get('CELERIAC_TEST_BROKER', 'amqp://guest:guest@127.0.0.1:5672//'),
    backend=celery_backend(os.environ.get('CELERIAC_TEST_BACKEND', 'rpc://')),
)
app.conf.result_extended = True
if 'CELERIAC_TEST_RESULT_EXPIRES' in os.environ:
    app.conf.result_expires = int(os.environ['CELERIAC_TEST_RESULT_EXPIRES'])
app.conf.worker_hijack_root_logger = False
app.conf.broker_connection_retry_on_startup = True
# Routes for the workflow steps this worker sends on (a JSON task_routes).
app.conf.task_routes = json.loads(os.environ.get('CELERIAC_TEST_ROUTES', '{}'))
if 'CELERIAC_TEST_SUBSCRIBE' in os.environ:
    from kombu import Exchange, Queue

    _queue, _exchange, _pattern = os.environ['CELERIAC_TEST_SUBSCRIBE'].split()
    app.conf.task_queues = [Queue(_queue, Exchange(_exchange, type='topic'), routing_key=_pattern)]
if 'CELERIAC_TEST_SECURITY' in os.environ:
    # Signed messages, as Celery's docs set them up; the directory holds
    # what tests/interop/make_certs.py wrote.
    _certs = os.environ['CELERIAC_TEST_SECURITY']
    app.conf.update(
        security_key=os.path.join(_certs, 'python.key'),
        security_certificate=os.path.join(_certs, 'python.pem'),
        security_cert_store=os.path.join(_certs, 'store', '*.pem'),
        task_serializer='auth',
        result_serializer='auth',
        accept_content=['auth'],
    )
    app.setup_security()
if 'CELERIAC_TEST_BROADCAST' in os.environ:
    from kombu.common import Broadcast

    app.conf.task_queues = [Broadcast(os.environ['CELERIAC_TEST_BROADCAST'])]


def _instrument():
    """Traces task publishing and runs as a traced Python app does."""
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())
    CeleryInstrumentor().instrument()


if os.environ.get('CELERIAC_TEST_OTEL'):
    _instrument()


def _count_runs(path):
    """Appends one byte to ``path`` after each task run, from whichever
    pool process ran it: how ``celeriac-bench`` sees that this worker has
    run every task of a drain (it acks before running, so the queue's
    counts cannot say), the condition it stops Celeriac's drain on too."""
    from celery.signals import task_postrun

    opened = {}

    @task_postrun.connect(weak=False)
    def _ran(**_):
        pid = os.getpid()
        if pid not in opened:
            opened[pid] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(opened[pid], b'.')


if os.environ.get('CELERIAC_BENCH_RUNS_FILE'):
    _count_runs(os.environ['CELERIAC_BENCH_RUNS_FILE'])


@app.task(name='interop.trace_id')
def trace_id(*args):
    """The W3C trace id of the span this run is in (32 hex digits), or None."""
    from opentelemetry import trace
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, '032x') if context.is_valid else None


@app.task(name='interop.add')
def add(x, y):
    return x + y


@app.task(name='interop.tsum')
def tsum(values):
    """The sum of a list (a chord body)."""
    return sum(values)


@app.task(name='interop.slow_add')
def slow_add(x, y, pause):
    """``x + y`` after ``pause`` seconds (a chord member that finishes last)."""
    time.sleep(pause)
    return x + y


@app.task(name='interop.echo')
def echo(*args, **kwargs):
    """Returns what it was called with; special types go back as kombu envelopes."""
    return [list(args), kwargs]


@app.task(name='interop.describe')
def describe(*args):
    """The Python type of each argument, as kombu decoded it."""
    return [type(a).__name__ for a in args]


@app.task(name='interop.fail')
def fail(message):
    raise KeyError(message)


@app.task(name='interop.flaky', bind=True, max_retries=3)
def flaky(self, value):
    """Fails its first attempt with a retry, then returns ``value``."""
    if self.request.retries == 0:
        raise self.retry(countdown=0.2, exc=ConnectionError('first attempt fails'))
    return value


@app.task(name='interop.now')
def now():
    """The worker's clock when the task starts, in seconds since the epoch."""
    return time.time()


@app.task(name='interop.special')
def special():
    """Returns one value of each kombu special type."""
    from datetime import date, datetime, timezone
    return [datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc), date(2024, 1, 2),
            Decimal('1.10'), UUID('12345678-1234-5678-1234-567812345678'), b'\xff\x00']


@app.task(name='interop.sleep')
def sleep(seconds):
    """Sleeps ``seconds`` and returns them (``demo.sleep``)."""
    time.sleep(seconds)
    return seconds


@app.task(name='interop.value_error')
def value_error(message):
    """Raises ``ValueError(message)`` (``demo.fail``)."""
    raise ValueError(message)


@app.task(name='interop.cpu')
def cpu(iterations):
    """A CPU-bound loop of ``iterations`` steps (``demo.cpu``)."""
    acc = 0
    for i in range(int(iterations)):
        acc = (acc * 31 + i) % 1000003
    return acc


@app.task(name='events.order_created')
def order_created(order_id):
    """This service's handler of the ``order.created`` event."""
    import redis

    client = redis.Redis.from_url(os.environ['CELERIAC_TEST_REDIS'])
    client.rpush(os.environ['CELERIAC_TEST_EVENTS_KEY'], order_id)


def _exit_with_parent():
    """Stops the worker if the test process that started it goes away."""
    parent = os.getppid()
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


if os.environ.get('CELERIAC_EXIT_WITH_PARENT'):
    threading.Thread(target=_exit_with_parent, daemon=True).start()
