#!/usr/bin/env python3
"""Check that Python Celery reads Rust-encoded messages like its own ones.

Usage::

    check_rust_messages.py <dir-of-rust-encoded-messages> <fixtures-dir>

Each ``<name>.json`` in the first directory is a message the Rust encoder
built for the fixture ``<fixtures-dir>/<name>.json``.  It holds ``name``,
``exchange``, ``routing_key``, ``properties``, ``headers_amqp`` (base64 of
a length-prefixed AMQP field table), ``body`` (base64) and ``encoded_at``
(ISO-8601 UTC time of encoding).

Both the Rust message and the fixture (what Python Celery itself sent) are
read by the same Python code path:

* the header table is decoded by py-amqp and the properties go through
  py-amqp's own encoder and decoder;
* a kombu ``Message`` is built from them exactly as kombu's py-amqp
  transport does on delivery, accepting only ``json`` (kombu decompresses
  per the ``compression`` header and deserializes);
* task messages are then handed to the worker's own dispatch logic
  (protocol detection as in ``Consumer.create_task_handler``, the v1 and
  hybrid conversions of ``celery.worker.strategy``) and to
  ``celery.worker.request.Request``, so Celery itself parses task, id,
  args, kwargs, eta, expires and time limits;
* result messages are decoded as the rpc backend does and their exception
  payloads turned back into exceptions by ``Backend.exception_to_python``.

The two readings are compared field by field.  Per-process values
(``reply_to``, ``origin``) are not compared; ``argsrepr``/``kwargsrepr``,
raw time strings and header type letters are reported as information only.
Output: one ``ok <name>`` or ``FAIL <name>: ...`` line per message, then
``N passed, M failed``.  Exit status 1 on any failure or if there was no
message to check.
"""

import base64
import json
import math
import struct
import sys
from datetime import datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import amqp
from amqp.serialization import decode_properties_basic
from celery import Celery
from celery.worker.request import Request
from celery.worker.strategy import hybrid_to_proto2, proto1_to_proto2
from dateutil.parser import isoparse
from kombu.serialization import prepare_accept_content
from kombu.transport.pyamqp import Message as KombuAmqpMessage

ACCEPT = prepare_accept_content(['json'])

#: Headers Celery itself defines; anything else is a custom header.
STANDARD_HEADERS = frozenset({
    'lang', 'task', 'id', 'shadow', 'eta', 'expires', 'group', 'group_index',
    'retries', 'timelimit', 'root_id', 'parent_id', 'argsrepr', 'kwargsrepr',
    'origin', 'ignore_result', 'replaced_task_nesting', 'stamped_headers',
    'stamps', 'compression', 'meth',
})

#: Properties compared by value.  ``expiration`` is compared by presence
#: (its value only in time-relative cases); ``reply_to`` is per-process.
COMPARED_PROPERTIES = ('content_type', 'content_encoding', 'correlation_id',
                       'delivery_mode', 'priority')

#: Fields checked against ``encoded_at`` instead of the fixture:
#: case -> {field: (expected offset from encoded_at, tolerance)}.
TIME_RELATIVE = {
    'countdown': {'eta': (timedelta(seconds=10), timedelta(seconds=5))},
    'expires_seconds': {
        'expires': (timedelta(seconds=60), timedelta(seconds=5)),
        'expiration': (60000, 5000),
    },
}

#: Fields whose difference is only reported, never a failure.
INFORMATIONAL = frozenset({'argsrepr', 'kwargsrepr', 'eta_text',
                           'expires_text', 'date_done',
                           'signature_reply_to', 'dropped_properties'})
#: Prefix of the informational per-header AMQP type letters.
TYPE_PREFIX = 'header_type.'


class Unreadable(Exception):
    """The message could not even be turned into an AMQP message."""


# ---------------------------------------------------------------------------
# From JSON to the message a Python consumer receives
# ---------------------------------------------------------------------------

def load_json(path):
    return json.loads(Path(path).read_text(encoding='utf-8'))


def decode_header_table(headers_amqp):
    """Decode base64 field-table bytes with py-amqp; return (table, raw)."""
    raw = base64.b64decode(headers_amqp)
    (table,), offset = amqp.serialization.loads('F', raw, 0)
    if offset != len(raw):
        raise Unreadable(f'headers_amqp: {len(raw) - offset} trailing bytes')
    return table, raw


def wire_properties(properties):
    """Round-trip properties through py-amqp's content-header codec.

    Returns the properties py-amqp would deliver and the names of keys it
    dropped (non-standard keys or ``None`` values).
    """
    message = amqp.Message(b'', **properties)
    try:
        encoded = message._serialize_properties()
    except Exception as exc:  # noqa: BLE001 - any encoding failure
        raise Unreadable(f'properties: py-amqp cannot encode them: {exc!r}')
    decoded, _ = decode_properties_basic(encoded, 0)
    dropped = sorted(set(properties) - set(decoded))
    return decoded, dropped


def to_kombu_message(doc):
    """Build the kombu message a py-amqp consumer would get for ``doc``."""
    headers, raw_headers = decode_header_table(doc['headers_amqp'])
    properties, dropped = wire_properties(doc.get('properties') or {})
    raw = amqp.Message(base64.b64decode(doc['body']),
                       application_headers=headers, **properties)
    raw.delivery_info = {
        'consumer_tag': 'interop-check', 'delivery_tag': 1,
        'redelivered': False, 'exchange': doc.get('exchange', ''),
        'routing_key': doc.get('routing_key', ''),
    }
    message = KombuAmqpMessage(raw, channel=None, accept=ACCEPT)
    return message, raw_headers, dropped


# ---------------------------------------------------------------------------
# How the Python worker reads a task message
# ---------------------------------------------------------------------------

def never_run(*args, **kwargs):
    """Body of the checker's tasks; requests are parsed, never executed."""
    raise AssertionError('the interop checker does not execute tasks')


def make_app():
    """An app that knows every task name the fixtures send."""
    app = Celery('interop-check', broker='memory://', backend='rpc://',
                 set_as_current=False)
    for name in ('proj.tasks.add', 'proj.tasks.echo', 'proj.tasks.tsum',
                 'images.resize'):
        app.task(name=name, shared=False)(never_run)
    return app


def worker_request(app, message):
    """Parse ``message`` the way the worker does; return (request, embed).

    Protocol detection follows ``Consumer.create_task_handler``, the
    conversion of v1/hybrid bodies follows ``strategy.default``, and the
    request object is Celery's own ``Request``.
    """
    if message.errors:
        raise message.errors[0][1]
    payload = None
    if 'task' in message.headers:            # protocol v2 (or hybrid)
        task_name = message.headers['task']
    else:                                     # protocol v1: decode now
        payload = message.decode()
        if not isinstance(payload, dict) or 'task' not in payload:
            raise ValueError('unknown message (neither v1 nor v2)')
        task_name = payload['task']
    if payload is None and 'args' not in message.payload:
        body, headers, decoded = message.body, message.headers, False
        utc = app.uses_utc_timezone()
    elif 'args' in message.payload:
        body, headers, decoded, utc = hybrid_to_proto2(message,
                                                      message.payload)
    else:
        body, headers, decoded, utc = proto1_to_proto2(message, payload)
    request = Request(message, app=app, hostname='interop-check',
                      task=app.tasks[task_name], body=body, headers=headers,
                      decoded=decoded, utc=utc)
    embed = (body if decoded else message.payload)[2]
    return request, embed


def strip_signature_reply_to(value):
    """Drop per-process ``reply_to`` from signature options, recursively."""
    if isinstance(value, dict):
        return {key: strip_signature_reply_to(item)
                for key, item in value.items()
                if not (key == 'reply_to' and 'task_id' in value)}
    if isinstance(value, list):
        return [strip_signature_reply_to(item) for item in value]
    return value


def normalized_embed(embed):
    embed = embed or {}
    return {key: strip_signature_reply_to(embed.get(key))
            for key in ('callbacks', 'errbacks', 'chain', 'chord')}


def task_fields(app, message):
    """The fields of a task message as the Python worker sees them."""
    request, embed = worker_request(app, message)
    info = request.request_dict
    return {
        'task': request.type,
        'id': request.id,
        'shadow': info.get('shadow'),
        'args': request.args,
        'kwargs': request.kwargs,
        'embed': normalized_embed(embed),
        'eta': request.eta,
        'expires': request.expires,
        'timelimit': list(request.time_limits),
        'retries': info.get('retries', 0),
        'group': info.get('group'),
        'group_index': info.get('group_index'),
        'root_id': info.get('root_id'),
        'parent_id': info.get('parent_id'),
        'ignore_result': info.get('ignore_result'),
        'replaced_task_nesting': info.get('replaced_task_nesting', 0),
        'stamped_headers': info.get('stamped_headers') or None,
        'stamps': info.get('stamps') or {},
        'utc': request.utc,
        'compression': message.headers.get('compression'),
        'argsrepr': request.argsrepr,
        'kwargsrepr': request.kwargsrepr,
        'eta_text': info.get('eta'),
        'expires_text': info.get('expires'),
        'signature_reply_to': embed_reply_tos(embed),
    }


def embed_reply_tos(value):
    """Collect the ``reply_to`` options embedded signatures carry."""
    found = []
    if isinstance(value, dict):
        if 'task_id' in value and 'reply_to' in value:
            found.append(value['reply_to'])
        for item in value.values():
            found.extend(embed_reply_tos(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(embed_reply_tos(item))
    return found


# ---------------------------------------------------------------------------
# How the rpc backend reads a result message
# ---------------------------------------------------------------------------

def result_fields(app, message):
    """The fields of a result message as the rpc result consumer sees them.

    ``date_done`` is the worker's clock: its value is informational, but
    whether it is set and whether it carries a UTC offset are compared.
    The exception payload of failure states is turned back into an
    exception by the backend (``meta_from_decoded``) and compared as
    (class name, class module, args).
    """
    if message.errors:
        raise message.errors[0][1]
    meta = dict(message.decode())
    date_done = meta.pop('date_done', None)
    fields = {f'meta.{key}': value for key, value in meta.items()}
    fields['date_done'] = date_done
    fields['date_done_set'] = date_done is not None
    if date_done is not None:
        fields['date_done_aware'] = isoparse(date_done).tzinfo is not None
    result = app.backend.meta_from_decoded(dict(meta))['result']
    if isinstance(result, BaseException):
        fields['exception'] = (type(result).__name__,
                               type(result).__module__, result.args)
    return fields


# ---------------------------------------------------------------------------
# Field sets and comparison
# ---------------------------------------------------------------------------

def header_types(raw):
    """Summarize a field table as type letters, e.g. {'x': 'A[I,S]'}."""
    table, _ = _types_of_table(raw, 0)
    return table


_SIZES = {'t': 1, 'b': 1, 'B': 1, 's': 2, 'U': 2, 'u': 2, 'I': 4, 'i': 4,
          'L': 8, 'l': 8, 'f': 4, 'd': 8, 'T': 8, 'D': 5, 'V': 0}


def _types_of_table(raw, offset):
    (size,) = struct.unpack_from('>I', raw, offset)
    offset, end, types = offset + 4, offset + 4 + size, {}
    while offset < end:
        key_len = raw[offset]
        key = raw[offset + 1:offset + 1 + key_len].decode('utf-8', 'replace')
        types[key], offset = _type_of_value(raw, offset + 1 + key_len)
    return types, end


def _type_of_value(raw, offset):
    letter = chr(raw[offset])
    offset += 1
    if letter in _SIZES:
        return letter, offset + _SIZES[letter]
    if letter in 'Sx':
        (size,) = struct.unpack_from('>I', raw, offset)
        return letter, offset + 4 + size
    if letter == 'F':
        table, offset = _types_of_table(raw, offset)
        inner = ','.join(f'{key}:{kind}' for key, kind in table.items())
        return f'F{{{inner}}}', offset
    if letter == 'A':
        (size,) = struct.unpack_from('>I', raw, offset)
        offset, end, items = offset + 4, offset + 4 + size, []
        while offset < end:
            kind, offset = _type_of_value(raw, offset)
            items.append(kind)
        return f"A[{','.join(items)}]", end
    return f'?{letter}', len(raw)


def message_fields(app, kind, doc):
    """All compared and informational fields of one message document."""
    try:
        message, raw_headers, dropped = to_kombu_message(doc)
    except Exception as exc:  # noqa: BLE001 - report, don't crash
        return {'decode': f'{type(exc).__name__}: {exc}'}
    fields = {'exchange': doc.get('exchange', ''),
              'routing_key': doc.get('routing_key', '')}
    for key in COMPARED_PROPERTIES:
        fields[f'properties.{key}'] = message.properties.get(key)
    fields['properties.expiration?'] = 'expiration' in message.properties
    fields['expiration'] = message.properties.get('expiration')  # see compare
    fields['dropped_properties'] = dropped
    for key, letters in header_types(raw_headers).items():
        fields[TYPE_PREFIX + key] = letters
    standard = STANDARD_HEADERS if kind != 'result' else frozenset()
    for key, value in message.headers.items():
        if key not in standard:
            fields[f'header.{key}'] = value
    read = result_fields if kind == 'result' else task_fields
    try:
        fields.update(read(app, message))
    except Exception as exc:  # noqa: BLE001 - an error is a result too
        fields['decode'] = f'error {type(exc).__name__}'
    else:
        fields['decode'] = 'ok'
    return fields


def same(a, b):
    """Strict equality of decoded Python values (types, float signs, offsets)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, (datetime, time)):
        return a == b and a.utcoffset() == b.utcoffset()
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple()
    return a == b


def same_instant(a, b):
    """eta/expires: the same moment (offsets may differ), or both absent."""
    if a is None or b is None:
        return a is None and b is None
    return a == b


COMPARATORS = {'eta': same_instant, 'expires': same_instant}


def check_time_relative(name, rust, encoded_at):
    """Check time-relative fields against the Rust encoding time."""
    problems = []
    for field, (offset, tolerance) in TIME_RELATIVE[name].items():
        value = rust.get(field)
        if field == 'expiration':
            ok = (isinstance(value, str) and value.isdigit()
                  and abs(int(value) - offset) <= tolerance)
            expected = f'{offset}±{tolerance}'
        else:
            expected = f'encoded_at+{offset}±{tolerance}'
            ok = (isinstance(value, datetime) and value.tzinfo is not None
                  and abs(value - (encoded_at + offset)) <= tolerance)
        if not ok:
            problems.append((field, value, expected))
    return problems


def compare(name, rust, python, encoded_at):
    """Return (failures, infos) as lists of (field, rust, python)."""
    if rust.get('decode') != python.get('decode'):
        return [('decode', rust.get('decode'), python.get('decode'))], []
    failures, infos = [], []
    relative = TIME_RELATIVE.get(name, {})
    skipped = {'expiration'} | set(relative) | {f'{f}_text' for f in relative}
    for field in sorted(set(rust) | set(python)):
        if field in skipped:
            continue
        a, b = rust.get(field), python.get(field)
        equal = COMPARATORS.get(field, same)(a, b)
        if not equal:
            informational = (field in INFORMATIONAL
                             or field.startswith(TYPE_PREFIX))
            (infos if informational else failures).append((field, a, b))
    if relative:
        if encoded_at is None:
            failures.append(('encoded_at', None, 'an ISO-8601 UTC time'))
        else:
            failures.extend(check_time_relative(name, rust, encoded_at))
    return failures, infos


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------

def short(value, limit=160):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'


def parse_encoded_at(doc):
    try:
        value = isoparse(doc['encoded_at'])
    except (KeyError, TypeError, ValueError):
        return None
    return value if value.tzinfo is not None else None


def check_one(app, rust_path, fixtures_dir):
    """Check one Rust message; return (passed, lines to print)."""
    name = rust_path.stem
    fixture_path = fixtures_dir / rust_path.name
    if not fixture_path.exists():
        return False, [f'FAIL {name}: fixture: missing {fixture_path}']
    try:
        rust_doc = load_json(rust_path)
    except ValueError as exc:
        return False, [f'FAIL {name}: json: {exc}']
    if rust_doc.get('name', name) != name:
        return False, [f"FAIL {name}: name: rust={rust_doc['name']!r} "
                       f'python={name!r}']
    fixture = load_json(fixture_path)
    rust = message_fields(app, fixture['kind'], rust_doc)
    python = message_fields(app, fixture['kind'], fixture)
    if python.get('decode') != 'ok' and not fixture.get('expect_error'):
        return False, [f"FAIL {name}: fixture: Python cannot read its own "
                       f"fixture ({python.get('decode')})"]
    failures, infos = compare(name, rust, python, parse_encoded_at(rust_doc))
    details = [f'{field}: rust={short(a)} python={short(b)}'
               for field, a, b in failures]
    lines = ([f'FAIL {name}: ' + '; '.join(details)] if failures
             else [f'ok {name}'])
    lines += [f'  info {name}: {field}: rust={short(a)} python={short(b)}'
              for field, a, b in infos]
    return not failures, lines


def main(argv):
    if len(argv) != 3:
        print('usage: check_rust_messages.py <rust-messages-dir> '
              '<fixtures-dir>', file=sys.stderr)
        return 2
    rust_dir, fixtures_dir = Path(argv[1]), Path(argv[2])
    app = make_app()
    passed = failed = 0
    for rust_path in sorted(rust_dir.glob('*.json')):
        ok, lines = check_one(app, rust_path, fixtures_dir)
        print('\n'.join(lines))
        passed, failed = passed + ok, failed + (not ok)
    print(f'{passed} passed, {failed} failed')
    return 1 if failed or not passed + failed else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
