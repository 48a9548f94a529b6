#!/usr/bin/env python3
"""A trace started in Python continues through a Rust task and back.

Usage::

    drive_trace.py <broker-url> <RQ> <PQ>

A Rust worker consumes ``RQ`` (with ``demo.trace_id``) and a Python worker
traced with ``opentelemetry-instrumentation-celery`` (``CELERIAC_TEST_OTEL=1``)
consumes ``PQ``. This producer is traced the same way: inside a span (a web
request, say) it sends ``demo.trace_id`` to the Rust worker with a link to
``interop.trace_id`` on the Python worker, and checks that the Rust task, the
callback the Rust worker sent, and a task the Rust task's callback chain
ends in all report the producer's trace id.

Output: ``ok`` lines, or ``FAIL <detail>`` and exit status 1.
"""

import os
import sys

os.environ['CELERIAC_TEST_BROKER'] = sys.argv[1]
os.environ['CELERIAC_TEST_OTEL'] = '1'

from opentelemetry import trace  # noqa: E402

from tasks import app  # noqa: E402  (instruments the app)

TIMEOUT = 30
rust_queue, python_queue = sys.argv[2], sys.argv[3]
tracer = trace.get_tracer('celeriac-interop')
failures = []


def expect(ok, detail):
    print(('ok ' if ok else 'FAIL ') + detail)
    if not ok:
        failures.append(detail)


with tracer.start_as_current_span('web request') as span:
    want = format(span.get_span_context().trace_id, '032x')
    callback = app.signature('interop.trace_id', queue=python_queue)
    callback.freeze()
    rust = app.send_task('demo.trace_id', queue=rust_queue, link=callback)
    chained = (app.signature('demo.trace_id', queue=rust_queue)
               | app.signature('interop.trace_id', queue=python_queue)).apply_async()

rust_seen = rust.get(timeout=TIMEOUT)
expect(rust_seen == want, f'the Rust task continues the trace: {rust_seen} (want {want})')
python_seen = app.AsyncResult(callback.id).get(timeout=TIMEOUT)
expect(python_seen == want,
       f'the callback the Rust worker sent continues it on Python: {python_seen}')
chain_seen = chained.get(timeout=TIMEOUT)
expect(chain_seen == want, f'a Rust -> Python chain step continues it: {chain_seen}')
sys.exit(1 if failures else 0)
