"""Python Celery's side of the signed-message tests (``auth`` serializer).

    python drive_signed.py BROKER QUEUE CERTS [BACKEND]

With the keys and certificates ``make_certs.py`` wrote to CERTS, sends to
QUEUE (served by a Rust worker with signing required):

- a signed ``ping`` to the worker (``test@QUEUE``), whose signed reply it
  verifies;
- ``demo.add(2, 3)`` signed with ``python.key``, and waits for its result
  through BACKEND (``rpc://`` by default; the Rust worker signs the result
  and this app verifies it); on Redis also a chord of ``demo.add`` tasks
  into ``demo.tsum``, whose parts the Rust worker stores signed;
- the same task unsigned (plain JSON);
- the same signed with ``stranger.key``, whose certificate nobody trusts;
- the same signed with ``python.key``, its body altered after signing.

Prints one JSON object: the result, and the task id of each bad message.
"""

import json
import os
import sys

from celery import Celery, chord
from kombu.serialization import registry
from kombu.utils.encoding import ensure_bytes

from celery.utils.serialization import b64decode, b64encode


def make_app(broker, certs, signer=None, backend='rpc://'):
    app = Celery('signed', broker=broker, backend=backend)
    app.conf.broker_connection_retry_on_startup = True
    if signer:
        app.conf.update(
            security_key=os.path.join(certs, f'{signer}.key'),
            security_certificate=os.path.join(certs, f'{signer}.pem'),
            security_cert_store=os.path.join(certs, 'store', '*.pem'),
            task_serializer='auth',
            result_serializer='auth',
            accept_content=['auth'],
        )
        app.setup_security()
    return app


def register_tampering():
    """An ``auth-tampered`` serializer: signs as ``auth`` does, then changes
    the signed body (``[[2, 3]`` becomes ``[[2, 4]``) and keeps the signature
    (in either of Celery's envelope layouts, the body is the plain tail)."""
    sign = registry._encoders['auth'].encoder

    def tampered(data):
        packed = b64decode(ensure_bytes(sign(data)))
        return b64encode(packed.replace(b'[[2, 3]', b'[[2, 4]', 1))

    registry.register('auth-tampered', tampered, None,
                      content_type='application/data', content_encoding='utf-8')


def main(broker, queue, certs, backend='rpc://'):
    signed = make_app(broker, certs, 'python', backend)
    result = signed.send_task('demo.add', args=(2, 3), queue=queue)
    value = result.get(timeout=60)
    # Remote control is signed too (kombu's mailbox uses the task serializer).
    pongs = signed.control.ping(destination=[f'test@{queue}'], timeout=5)
    total = None
    if not backend.startswith('rpc'):
        header = [signed.signature('demo.add', args=(i, i), queue=queue) for i in range(3)]
        body = signed.signature('demo.tsum', queue=queue)
        total = chord(header)(body).get(timeout=60)

    plain = Celery('plain', broker=broker)
    unsigned = plain.send_task('demo.add', args=(2, 3), queue=queue).id

    register_tampering()
    tampered = signed.send_task('demo.add', args=(2, 3), queue=queue,
                                serializer='auth-tampered', ignore_result=True).id

    stranger_app = make_app(broker, certs, 'stranger')
    stranger = stranger_app.send_task('demo.add', args=(2, 3), queue=queue,
                                      ignore_result=True).id

    print(json.dumps({'result': value, 'pongs': len(pongs), 'chord': total, 'unsigned': unsigned,
                      'tampered': tampered, 'stranger': stranger}))


if __name__ == '__main__':
    main(*sys.argv[1:5])
