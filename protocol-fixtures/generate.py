#!/usr/bin/env python3
"""Generate Celery wire-protocol fixtures from the pinned Python Celery.

Every fixture is a message built by Python Celery itself, exactly as it
would be handed to RabbitMQ by py-amqp: exchange, routing key, the AMQP
basic properties present on the wire, the application headers (both as
typed values and as the raw py-amqp field-table bytes) and the final body
bytes (serialized and, where asked for, compressed).

How it works:

* The apps use kombu's in-memory transport (``memory://``) and
  ``kombu.messaging.Producer._publish`` is replaced for the duration of
  each case, so nothing reaches any broker.  The replacement builds the
  ``amqp.Message`` the same way kombu's py-amqp transport does and lets
  py-amqp serialize and re-read the content-header properties, so the
  stored properties are the ones py-amqp really puts on the wire.
* Each case is a snippet of Python source; the snippet is what gets
  executed and is also stored verbatim in the fixture's ``python`` field.
* Determinism: task ids are fixed (``TASK_ID`` in a snippet), ids that
  Celery generates on its own (chain steps, group members, group ids) come
  from a per-case counter, the per-thread reply queue name (``reply_to``)
  and the ``origin`` header are fixed, and result messages plus the
  ``expires_datetime`` case read a pinned clock.  Only ``countdown`` and
  ``expires_seconds`` depend on the real time of the run.

Run with the interop venv from the repository root::

    .venv-interop/bin/python protocol-fixtures/generate.py
"""

import base64
import contextlib
import dataclasses
import itertools
import json
import math
import os
import platform
import struct
import sys
import types
import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from traceback import format_exc
from unittest import mock

import amqp
import celery
import kombu
from amqp.serialization import decode_properties_basic
from celery import Celery, chain, chord, group
from celery.app.amqp import AMQP
from celery.app.task import Context
from kombu import Exchange, Queue
from kombu.compression import decompress
from kombu.exceptions import ContentDisallowed
from kombu.messaging import Producer
from kombu.serialization import loads, prepare_accept_content
from kombu.utils import json as kombu_json

#: Where the fixtures go: ``fixtures/``, or the directory named by
#: ``CELERIAC_FIXTURES_DIR`` (to compare another Celery version's messages).
FIXTURES_DIR = Path(
    os.environ.get('CELERIAC_FIXTURES_DIR')
    or Path(__file__).resolve().parent / 'fixtures'
)

#: Name of the reply queue every app reports as its per-thread oid.
FIXED_OID = '11111111-2222-4333-8444-555555555555'
#: Value of the ``origin`` header (normally ``gen<pid>@<hostname>``).
FIXED_ORIGIN = 'gen1@celeriac-fixtures'
#: Clock reading used where ``app.now()`` would leak into a fixed case.
FIXED_NOW = datetime(2030, 1, 1, 0, 0, 0, 123456, tzinfo=timezone.utc)
#: Worker identity used for result messages.
WORKER_HOSTNAME = 'w1@fixtures'
WORKER_PID = 4242

#: Modules that import ``kombu.utils.uuid.uuid`` and call it to make ids.
UUID_USERS = ('celery.canvas', 'celery.app.base', 'celery.app.task')

#: The 13 basic properties py-amqp can encode besides application_headers.
WIRE_PROPERTIES = (
    'content_type', 'content_encoding', 'delivery_mode', 'priority',
    'correlation_id', 'reply_to', 'expiration', 'message_id', 'timestamp',
    'type', 'user_id', 'app_id', 'cluster_id',
)


# ---------------------------------------------------------------------------
# Ids
# ---------------------------------------------------------------------------

def case_id(number):
    """Return the fixed task id of case ``number``."""
    return f'00000000-0000-4000-8000-{number:012x}'


def generated_id(number, counter):
    """Return the ``counter``-th id Celery generates itself in case ``number``."""
    return f'00000000-0000-4000-8000-{number:04x}{counter:08x}'


@contextlib.contextmanager
def deterministic_uuids(number):
    """Make Celery's own ``uuid()`` calls return predictable ids."""
    counter = itertools.count(1)

    def next_uuid():
        return generated_id(number, next(counter))

    with contextlib.ExitStack() as stack:
        for module in UUID_USERS:
            stack.enter_context(mock.patch(f'{module}.uuid', next_uuid))
        yield


# ---------------------------------------------------------------------------
# Apps
# ---------------------------------------------------------------------------

class FixtureAMQP(AMQP):
    """The stock AMQP helper with a fixed ``origin`` header."""

    def as_task_v2(self, *args, origin=None, **kwargs):
        return super().as_task_v2(*args, origin=origin or FIXED_ORIGIN,
                                  **kwargs)


class FixtureCelery(Celery):
    """A Celery app with a fixed reply queue name and an optional pinned clock."""

    amqp_cls = FixtureAMQP
    pinned_now = None

    @property
    def thread_oid(self):
        return FIXED_OID

    def now(self):
        if self.pinned_now is None:
            return super().now()
        return self.pinned_now.astimezone(self.timezone)


@contextlib.contextmanager
def pinned_clock(app, when=FIXED_NOW):
    """Make ``app.now()`` return ``when`` inside the block."""
    app.pinned_now = when
    try:
        yield
    finally:
        app.pinned_now = None


def register_tasks(app):
    """Register the project's example tasks on ``app``."""

    @app.task(name='proj.tasks.add', shared=False)
    def add(x, y):
        return x + y

    @app.task(name='proj.tasks.echo', shared=False)
    def echo(*args, **kwargs):
        return args, kwargs

    @app.task(name='proj.tasks.tsum', shared=False)
    def tsum(nums):
        return sum(nums)


def make_app(backend='cache+memory://', **config):
    """Create an in-memory app with the example tasks and extra ``config``."""
    app = FixtureCelery('proj', broker='memory://', backend=backend,
                        set_as_current=False)
    app.conf.update(config)
    register_tasks(app)
    return app


def make_apps():
    """Create every app configuration the cases refer to, by name."""
    images = Queue('images', Exchange('tasks', type='topic'),
                   routing_key='images.#')
    return {
        'default': make_app(),
        'berlin': make_app(timezone='Europe/Berlin'),
        'protocol_v1': make_app(task_protocol=1),
        'topic': make_app(
            task_queues=[images],
            task_routes={'images.*': {'queue': 'images',
                                      'routing_key': 'images.resize'}},
        ),
        'rpc': make_app(backend='rpc://'),
        'rpc_extended': make_app(backend='rpc://', result_extended=True),
    }


def worker_request(task_id):
    """Build the request context a worker has while running add(2, 2).

    It mirrors the context the Python worker builds from a task message
    delivered on queue ``celery`` by a client whose reply queue is
    ``FIXED_OID``; the rpc backend publishes results from it.
    """
    return Context(
        id=task_id, task='proj.tasks.add', args=[2, 2], kwargs={},
        root_id=task_id, parent_id=None, group=None, group_index=None,
        retries=0, hostname=WORKER_HOSTNAME, reply_to=FIXED_OID,
        correlation_id=task_id, origin=FIXED_ORIGIN, ignore_result=False,
        delivery_info={'exchange': '', 'routing_key': 'celery',
                       'priority': 0, 'redelivered': False},
        callbacks=None, errbacks=None, chain=None, chord=None,
        stamped_headers=None, stamps={}, called_directly=False,
    )


#: Source of the ``proj.errors`` module the ``result_failure_custom`` case uses.
PROJ_ERRORS_SOURCE = '''
class PaymentDeclined(Exception):
    """A payment was declined: (message, attempt)."""
'''


def install_errors_module():
    """Provide an importable ``proj.errors`` module (project-defined errors)."""
    proj = sys.modules.setdefault('proj', types.ModuleType('proj'))
    errors = types.ModuleType('proj.errors')
    exec(PROJ_ERRORS_SOURCE, errors.__dict__)  # noqa: S102 - our own source
    proj.errors = errors
    sys.modules['proj.errors'] = errors


# ---------------------------------------------------------------------------
# Capturing what py-amqp would send
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class WireMessage:
    """One basic.publish as py-amqp would put it on the wire."""

    exchange: str
    routing_key: str
    properties: dict
    headers: dict
    headers_amqp: bytes
    body: bytes


def to_wire(body, priority, content_type, content_encoding, headers,
            properties, routing_key, exchange):
    """Turn kombu's ``_publish`` arguments into a :class:`WireMessage`.

    The ``amqp.Message`` is built the way kombu's py-amqp transport builds
    it (``kombu.transport.pyamqp.Channel.prepare_message``), the body is
    encoded the way py-amqp's frame writer encodes a text body, and the
    properties are serialized and parsed back by py-amqp itself, so
    unknown keys and ``None`` values disappear exactly as on the wire.
    """
    message = amqp.Message(
        body, priority=priority, content_type=content_type,
        content_encoding=content_encoding, application_headers=headers,
        **(properties or {}))
    if isinstance(message.body, str):
        encoding = message.properties.setdefault('content_encoding', 'utf-8')
        message.body = message.body.encode(encoding)
    on_wire, _ = decode_properties_basic(message._serialize_properties(), 0)
    wire_headers = on_wire.pop('application_headers', {})
    return WireMessage(
        exchange=exchange or '',
        routing_key=routing_key,
        properties={key: on_wire[key] for key in WIRE_PROPERTIES
                    if key in on_wire},
        headers=wire_headers,
        headers_amqp=amqp.serialization.dumps('F', [headers or {}]),
        body=message.body,
    )


@contextlib.contextmanager
def capture_publishes():
    """Collect every message published inside the block instead of sending it."""
    published = []

    def fake_publish(producer, body, priority, content_type,
                     content_encoding, headers, properties, routing_key,
                     mandatory, immediate, exchange, declare, *args,
                     **kwargs):
        published.append(to_wire(body, priority, content_type,
                                 content_encoding, headers, properties,
                                 routing_key, exchange))

    with mock.patch.object(Producer, '_publish', fake_publish):
        yield published


# ---------------------------------------------------------------------------
# Typed view of an AMQP field table (parsed from py-amqp's bytes)
# ---------------------------------------------------------------------------

_FIXED_SIZE_TYPES = {
    # letter: (struct format, converter to a JSON value)
    't': ('>B', bool),
    'b': ('>b', int), 'B': ('>B', int),
    's': ('>h', int),  # RabbitMQ's signed 16-bit int
    'U': ('>h', int), 'u': ('>H', int),
    'I': ('>i', int), 'i': ('>I', int),
    'L': ('>q', int), 'l': ('>q', int),
    'f': ('>f', float), 'd': ('>d', float),
    'T': ('>Q', int),
}


def parse_field_table(buf):
    """Parse a length-prefixed AMQP field table into typed JSON values."""
    table, offset = _read_table(buf, 0)
    if offset != len(buf):
        raise ValueError(f'{len(buf) - offset} trailing bytes after table')
    return table


def _read_table(buf, offset):
    (size,), offset = struct.unpack_from('>I', buf, offset), offset + 4
    end, table = offset + size, {}
    while offset < end:
        key_len, offset = buf[offset], offset + 1
        key = buf[offset:offset + key_len].decode('utf-8')
        table[key], offset = _read_value(buf, offset + key_len)
    return table, end


def _read_value(buf, offset):
    letter, offset = chr(buf[offset]), offset + 1
    if letter in _FIXED_SIZE_TYPES:
        fmt, convert = _FIXED_SIZE_TYPES[letter]
        (raw,) = struct.unpack_from(fmt, buf, offset)
        return {letter: convert(raw)}, offset + struct.calcsize(fmt)
    if letter in 'Sx':
        (size,), offset = struct.unpack_from('>I', buf, offset), offset + 4
        raw = bytes(buf[offset:offset + size])
        value = (raw.decode('utf-8') if letter == 'S'
                 else base64.b64encode(raw).decode('ascii'))
        return {letter: value}, offset + size
    if letter == 'D':
        scale, unscaled = struct.unpack_from('>Bi', buf, offset)
        return {'D': [scale, unscaled]}, offset + 5
    if letter == 'V':
        return {'V': None}, offset
    if letter == 'F':
        table, offset = _read_table(buf, offset)
        return {'F': table}, offset
    if letter == 'A':
        (size,), offset = struct.unpack_from('>I', buf, offset), offset + 4
        end, items = offset + size, []
        while offset < end:
            item, offset = _read_value(buf, offset)
            items.append(item)
        return {'A': items}, end
    raise ValueError(f'unknown field type {letter!r} at offset {offset - 1}')


# ---------------------------------------------------------------------------
# Python's own reading of the body
# ---------------------------------------------------------------------------

def decode_body(wire, accept=('json',)):
    """Decompress and deserialize a body the way a kombu consumer does."""
    body = wire.body
    if wire.headers.get('compression'):
        body = decompress(body, wire.headers['compression'])
    return loads(body, wire.properties.get('content_type'),
                 wire.properties.get('content_encoding'),
                 accept=prepare_accept_content(accept))


def has_non_finite(value):
    """Tell whether a decoded structure holds NaN or an infinity."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(has_non_finite(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_non_finite(item) for item in value)
    return False


def decoded_view(kind, wire, expect_error):
    """Return the fixture's ``decoded`` field (``None`` for error cases)."""
    if expect_error == 'content_refused':
        try:
            decode_body(wire)
        except ContentDisallowed:
            return None
        raise AssertionError('a json-only consumer accepted the body')
    payload = decode_body(wire)
    if expect_error == 'non_finite_number':
        if not has_non_finite(payload):
            raise AssertionError('body holds no non-finite number')
        return None
    if kind == 'task_v2':
        args, kwargs, embed = payload
        payload = {'args': args, 'kwargs': kwargs, 'embed': embed}
    return json.loads(kombu_json.dumps(payload))


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    """One fixture: the snippet to run and which captured message to keep."""

    number: int
    name: str
    description: str
    source: str
    app: str = 'default'
    kind: str = 'task_v2'
    pick: int = 0                 # index of the captured message to keep
    id_seed: int = None           # case whose ids the snippet uses
    pinned: bool = False          # run with app.now() pinned to FIXED_NOW
    expect_error: str = None

    @property
    def seed(self):
        return self.number if self.id_seed is None else self.id_seed

    @property
    def python(self):
        """The snippet with ``TASK_ID`` replaced by the literal id."""
        return self.source.replace('TASK_ID', repr(case_id(self.seed)))


UTC_ETA = 'datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)'

CASES = [
    Case(0x01, 'plain_positional', 'Positional arguments only.',
         'add.apply_async((2, 2), task_id=TASK_ID)'),
    Case(0x02, 'kwargs_only', 'Keyword arguments only.',
         "add.apply_async(kwargs={'x': 1, 'y': 2}, task_id=TASK_ID)"),
    Case(0x03, 'args_and_kwargs', 'Positional and keyword arguments.',
         "echo.apply_async((1, 'two'), {'three': 3.0}, task_id=TASK_ID)"),
    Case(0x04, 'json_types',
         'Plain JSON types: non-ASCII and control characters, null, '
         'booleans, numbers incl. -0.0 and 1e100, nesting, empty containers.',
         r'''echo.apply_async(("héllo wörld", "中文", "😀", "\x00\t\n\"\\\x7f", None, True, False, 0, -1, 0.1, 1e100, -0.0, [1, [2, [3]]], {"a": {"b": [None]}}), {"empty_list": [], "empty_dict": {}, "unicode_key_é": 1}, task_id=TASK_ID)'''),
    Case(0x05, 'big_ints', 'Integers at and beyond the 64-bit limits.',
         'echo.apply_async((2**63 - 1, 2**63, -2**63, -2**63 - 1, 2**100, '
         '-(2**100)), task_id=TASK_ID)'),
    Case(0x06, 'kombu_datetime',
         'kombu datetime envelopes: aware UTC, naive, +05:30 with '
         'microseconds.',
         'echo.apply_async((datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc), '
         'datetime(2024, 1, 2, 3, 4, 5), datetime(2024, 1, 2, 3, 4, 5, 123456, '
         'tzinfo=timezone(timedelta(hours=5, minutes=30)))), task_id=TASK_ID)'),
    Case(0x07, 'kombu_date_time', 'kombu date and time envelopes.',
         'echo.apply_async((date(2024, 1, 2), time(1, 2, 3), '
         'time(1, 2, 3, 456789)), task_id=TASK_ID)'),
    Case(0x08, 'kombu_decimal', 'kombu decimal envelopes.',
         'echo.apply_async((Decimal("1.10"), Decimal("-0.000001"), '
         'Decimal("12345678901234567890.123456789")), task_id=TASK_ID)'),
    Case(0x09, 'kombu_uuid', 'kombu uuid envelope.',
         'echo.apply_async((uuid.UUID("12345678-1234-5678-1234-567812345678"),), '
         'task_id=TASK_ID)'),
    Case(0x0a, 'kombu_bytes',
         'kombu bytes envelopes: UTF-8 bytes, non-UTF-8 bytes (base64), '
         'empty bytes.',
         'echo.apply_async((b"hi", b"\\xff\\x00", b""), task_id=TASK_ID)'),
    Case(0x0b, 'eta_fixed', 'An aware UTC eta with microseconds.',
         'add.apply_async((1, 1), eta=datetime(2030, 1, 2, 3, 4, 5, 678901, '
         'tzinfo=timezone.utc), task_id=TASK_ID)'),
    Case(0x0c, 'eta_whole_second', 'An aware UTC eta on a whole second.',
         f'add.apply_async((1, 1), eta={UTC_ETA}, task_id=TASK_ID)'),
    Case(0x0d, 'countdown',
         'countdown=10, turned into an eta by the producer (time-relative).',
         'add.apply_async((1, 1), countdown=10, task_id=TASK_ID)'),
    Case(0x0e, 'eta_app_timezone',
         "An aware UTC eta sent from an app with timezone='Europe/Berlin'.",
         f'add.apply_async((1, 1), eta={UTC_ETA}, task_id=TASK_ID)',
         app='berlin'),
    Case(0x0f, 'expires_seconds',
         'expires=60 seconds: expires header plus expiration property '
         '(time-relative).',
         'add.apply_async((1, 1), expires=60, task_id=TASK_ID)'),
    Case(0x10, 'expires_datetime',
         'expires as an aware datetime; the expiration property is computed '
         'against a clock pinned to 2030-01-01T00:00:00.123456Z.',
         f'add.apply_async((1, 1), expires={UTC_ETA}, task_id=TASK_ID)',
         pinned=True),
    Case(0x11, 'retries', 'send_task with retries=3.',
         "app.send_task('proj.tasks.add', args=(1, 1), retries=3, "
         'task_id=TASK_ID)'),
    Case(0x12, 'time_limits', 'Hard and soft time limits (integers).',
         'add.apply_async((1, 1), time_limit=30, soft_time_limit=20, '
         'task_id=TASK_ID)'),
    Case(0x13, 'time_limit_float', 'A float hard time limit, no soft limit.',
         'add.apply_async((1, 1), time_limit=1.5, task_id=TASK_ID)'),
    Case(0x14, 'priority', 'Message priority 5.',
         'add.apply_async((1, 1), priority=5, task_id=TASK_ID)'),
    Case(0x15, 'shadow', 'A shadow name.',
         "add.apply_async((1, 1), shadow='proj.tasks.add.shadowed', "
         'task_id=TASK_ID)'),
    Case(0x16, 'ignore_result', 'ignore_result=True.',
         'add.apply_async((1, 1), ignore_result=True, task_id=TASK_ID)'),
    Case(0x17, 'custom_headers',
         'Custom headers of every JSON type, merged into the header table.',
         "add.apply_async((1, 1), headers={'x-custom': 'v', 'x-int': 5, "
         "'x-big': 2**40, 'x-neg': -7, 'x-float': 1.5, 'x-bool': True, "
         "'x-list': [1, 'a', None], 'x-dict': {'k': 'v', 'n': 1}, "
         "'x-none': None}, task_id=TASK_ID)"),
    Case(0x18, 'link', 'A success callback (embed.callbacks).',
         'add.apply_async((2, 2), link=add.s(4), task_id=TASK_ID)'),
    Case(0x19, 'link_error',
         'An error callback naming a task unknown to this app '
         '(embed.errbacks).',
         "add.apply_async((2, 2), link_error=app.signature('remote.on_error', "
         "args=('extra',)), task_id=TASK_ID)"),
    Case(0x1a, 'link_multiple', 'Two success callbacks, one immutable.',
         "add.apply_async((2, 2), link=[add.s(1), echo.si('done')], "
         'task_id=TASK_ID)'),
    Case(0x1b, 'chain',
         'First message of a three-step chain; the remaining steps are in '
         'embed.chain in reverse order.',
         'chain(add.s(2, 2), add.s(4), add.s(8)).apply_async(task_id=TASK_ID)'),
    Case(0x1c, 'chain_with_group',
         'First message of chain(task, group, task): embed.chain holds a '
         'celery.chord.',
         'chain(add.s(1, 1), group(add.s(1), add.s(2)), tsum.s()).apply_async()'),
    Case(0x1d, 'group_member_0', 'First member message of a group.',
         'group(add.s(1, 1), add.s(2, 2)).apply_async(task_id=TASK_ID)'),
    Case(0x1e, 'group_member_1', 'Second member message of the same group.',
         'group(add.s(1, 1), add.s(2, 2)).apply_async(task_id=TASK_ID)',
         pick=1, id_seed=0x1d),
    Case(0x1f, 'chord_header',
         'First header message of a chord; the body is in embed.chord.',
         'chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply_async(task_id=TASK_ID)'),
    Case(0x20, 'compressed_gzip', 'Body compressed with zlib (gzip alias).',
         "add.apply_async((2, 2), compression='gzip', task_id=TASK_ID)"),
    Case(0x21, 'compressed_bzip2', 'Body compressed with bzip2.',
         "add.apply_async((2, 2), compression='bzip2', task_id=TASK_ID)"),
    Case(0x22, 'compressed_lzma', 'Body compressed with lzma (xz container).',
         "add.apply_async((2, 2), compression='lzma', task_id=TASK_ID)"),
    Case(0x23, 'protocol_v1',
         'A task message in protocol v1 (task_protocol=1): empty headers, '
         'everything in the body.',
         'add.apply_async((2, 2), eta=datetime(2030, 1, 2, 3, 4, 5, 678901, '
         'tzinfo=timezone.utc), task_id=TASK_ID)',
         app='protocol_v1', kind='task_v1'),
    Case(0x24, 'stamped', 'A signature stamped through the stamping API.',
         "add.s(2, 2).stamp(monitoring_id='m-123').apply_async(task_id=TASK_ID)"),
    Case(0x25, 'send_task_queue',
         'send_task to a queue that is not configured (created on the fly).',
         "app.send_task('proj.tasks.add', args=[1, 2], kwargs={'z': 3}, "
         "queue='other', task_id=TASK_ID)"),
    Case(0x26, 'topic_route',
         'A task routed by task_routes to a queue bound to a topic exchange.',
         "app.send_task('images.resize', args=['https://example.com/a.png', "
         '800], task_id=TASK_ID)',
         app='topic'),
    Case(0x27, 'pickle_refused',
         'A pickle-serialized task; a consumer accepting only json refuses it.',
         "add.apply_async((2, 2), serializer='pickle', task_id=TASK_ID)",
         expect_error='content_refused'),
    Case(0x28, 'nan_refused',
         'NaN and infinities, which Python writes as bare NaN/Infinity tokens.',
         "echo.apply_async((float('nan'), float('inf'), float('-inf')), "
         'task_id=TASK_ID)',
         expect_error='non_finite_number'),
    Case(0x29, 'result_success',
         'rpc:// result message for a task that returned 4.',
         'app.backend.mark_as_done(TASK_ID, 4, request=worker_request(TASK_ID))',
         app='rpc', kind='result', pinned=True),
    Case(0x2a, 'result_success_extended',
         'rpc:// result message with result_extended=True.',
         'app.backend.mark_as_done(TASK_ID, 4, request=worker_request(TASK_ID))',
         app='rpc_extended', kind='result', pinned=True),
    Case(0x2b, 'result_failure',
         'rpc:// result message for a task that raised KeyError.',
         "try:\n    raise KeyError('missing')\nexcept KeyError as exc:\n"
         '    app.backend.mark_as_failure(TASK_ID, exc, traceback=format_exc(), '
         'request=worker_request(TASK_ID))',
         app='rpc', kind='result', pinned=True),
    Case(0x2c, 'result_retry',
         'rpc:// result message stored when a task schedules a retry.',
         "try:\n    raise ValueError('temporarily unavailable')\n"
         'except ValueError as exc:\n'
         '    app.backend.mark_as_retry(TASK_ID, exc, traceback=format_exc(), '
         'request=worker_request(TASK_ID))',
         app='rpc', kind='result', pinned=True),
    Case(0x2d, 'result_revoked', 'rpc:// result message for a revoked task.',
         "app.backend.mark_as_revoked(TASK_ID, 'revoked', "
         'request=worker_request(TASK_ID))',
         app='rpc', kind='result', pinned=True),
    Case(0x2e, 'result_started',
         'rpc:// STARTED message as sent with task_track_started.',
         f"app.backend.store_result(TASK_ID, {{'pid': {WORKER_PID}, "
         f"'hostname': {WORKER_HOSTNAME!r}}}, 'STARTED', "
         'request=worker_request(TASK_ID))',
         app='rpc', kind='result', pinned=True),
    Case(0x2f, 'result_failure_custom',
         'rpc:// result message for a project-defined exception '
         'proj.errors.PaymentDeclined.',
         'from proj.errors import PaymentDeclined\n'
         "try:\n    raise PaymentDeclined('card 42', 3)\n"
         'except PaymentDeclined as exc:\n'
         '    app.backend.mark_as_failure(TASK_ID, exc, traceback=format_exc(), '
         'request=worker_request(TASK_ID))',
         app='rpc', kind='result', pinned=True),
]


def namespace_for(app):
    """The names a case snippet may use, bound to ``app``."""
    return {
        'app': app,
        'add': app.tasks['proj.tasks.add'],
        'echo': app.tasks['proj.tasks.echo'],
        'tsum': app.tasks['proj.tasks.tsum'],
        'chain': chain, 'group': group, 'chord': chord,
        'datetime': datetime, 'date': date, 'time': time,
        'timedelta': timedelta, 'timezone': timezone,
        'Decimal': Decimal, 'uuid': uuid,
        'format_exc': format_exc, 'worker_request': worker_request,
    }


def run_case(case, app):
    """Execute the case's snippet and return the message it selects."""
    code = compile(case.python, f'<fixture {case.name}>', 'exec')
    clock = pinned_clock(app) if case.pinned else contextlib.nullcontext()
    with capture_publishes() as published, deterministic_uuids(case.seed), \
            clock:
        exec(code, namespace_for(app))  # noqa: S102 - our own snippets
    if len(published) <= case.pick:
        raise RuntimeError(f'{case.name}: only {len(published)} message(s) '
                           f'published, wanted #{case.pick}')
    return published[case.pick]


# ---------------------------------------------------------------------------
# Fixture files
# ---------------------------------------------------------------------------

def json_property(value):
    """Make a py-amqp property value JSON-friendly."""
    if isinstance(value, datetime):  # 'timestamp', never set by Celery
        return int(value.replace(tzinfo=timezone.utc).timestamp())
    return value


def generator_versions():
    return {
        'celery': celery.__version__,
        'kombu': kombu.__version__,
        'amqp': amqp.__version__,
        'python': platform.python_version(),
    }


def build_fixture(case, wire):
    """Assemble the fixture document for ``case`` from its wire message."""
    kind = 'task_v2' if 'task' in wire.headers else case.kind
    if kind != case.kind:
        raise AssertionError(f'{case.name}: expected {case.kind}, got {kind}')
    return {
        'name': case.name,
        'kind': case.kind,
        'description': case.description,
        'python': case.python,
        'generator': generator_versions(),
        'exchange': wire.exchange,
        'routing_key': wire.routing_key,
        'properties': {key: json_property(value)
                       for key, value in wire.properties.items()},
        'headers': parse_field_table(wire.headers_amqp),
        'headers_amqp': base64.b64encode(wire.headers_amqp).decode('ascii'),
        'body': base64.b64encode(wire.body).decode('ascii'),
        'decoded': decoded_view(case.kind, wire, case.expect_error),
        'expect_error': case.expect_error,
    }


def write_fixture(fixture, directory=FIXTURES_DIR):
    path = directory / f"{fixture['name']}.json"
    text = json.dumps(fixture, indent=2, sort_keys=False, ensure_ascii=False)
    path.write_text(text + '\n', encoding='utf-8')
    return path


def remove_stale_fixtures(keep, directory=FIXTURES_DIR):
    """Delete fixture files that no case produces any more."""
    for path in directory.glob('*.json'):
        if path.stem not in keep:
            path.unlink()
            print(f'removed stale {path.name}')


def main():
    install_errors_module()
    apps = make_apps()
    FIXTURES_DIR.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        wire = run_case(case, apps[case.app])
        path = write_fixture(build_fixture(case, wire))
        print(f'{case.number:02x} {case.name:<26} -> {path.name}')
    remove_stale_fixtures({case.name for case in CASES})
    print(f'{len(CASES)} fixtures in {FIXTURES_DIR}')


if __name__ == '__main__':
    main()
