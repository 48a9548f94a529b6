#!/usr/bin/env python3
"""Send a burst of tasks from a plain Python Celery producer.

Usage::

    send_burst.py <broker-url> <queue> <task> <count> [--eta-in S] [--arg X]
        [--index-arg] [--broadcast]

Sends ``count`` tasks named ``task`` to ``queue`` as fast as Celery sends
them, each with the single argument ``X`` if given, and due ``S`` seconds
after its own send if ``--eta-in`` is given (Celery's ``countdown``, spelled
as the exact ``eta`` it puts on the wire so the caller knows each due time).
With ``--index-arg`` each task's single argument is its index instead. With
``--broadcast``, ``queue`` is a broadcast queue (``task_queues`` holds
``Broadcast(queue)``): every worker consuming it gets each task.

Output: one JSON list on stdout, ``[{"id": ..., "sent": unix, "eta": unix or
null}, ...]`` in send order, printed once the broker has every message.

Celery publishes without confirms, and left to itself this script would exit
with the connection still open: RabbitMQ then sees the TCP connection close
without ``connection.close`` and shuts the channel down at once, dropping the
publishes it had read but not yet routed (on a loaded broker, the last few).
So the connection is closed with the handshake, which RabbitMQ answers only
once the channel has routed everything sent before it; and py-amqp's 1 s
``TCP_USER_TIMEOUT`` is lifted, so a broker that stops reading for a while
(flow control) slows this script down instead of resetting the connection.
A failure to close is an error (non-zero exit), never a silent loss.
"""

import argparse
import json
import socket
from datetime import datetime, timedelta, timezone

from celery import Celery


def main():
    p = argparse.ArgumentParser()
    p.add_argument('broker')
    p.add_argument('queue')
    p.add_argument('task')
    p.add_argument('count', type=int)
    p.add_argument('--eta-in', type=float, default=None)
    p.add_argument('--arg', type=float, default=None)
    p.add_argument('--index-arg', action='store_true')
    p.add_argument('--broadcast', action='store_true')
    a = p.parse_args()

    app = Celery('burst', broker=a.broker)
    app.conf.task_ignore_result = False
    # 0: the system's default, no user timeout.
    app.conf.broker_transport_options = {
        'socket_settings': {socket.TCP_USER_TIMEOUT: 0},
    }
    if a.broadcast:
        from kombu.common import Broadcast

        app.conf.task_queues = (Broadcast(a.queue),)
    args = [] if a.arg is None else [a.arg]
    sent = []
    with app.connection_for_write() as connection:
        producer = app.amqp.Producer(connection)
        for index in range(a.count):
            if a.index_arg:
                args = [index]
            now = datetime.now(timezone.utc)
            eta = None if a.eta_in is None else now + timedelta(seconds=a.eta_in)
            r = app.send_task(a.task, args=args, queue=a.queue, eta=eta, producer=producer)
            sent.append({
                'id': r.id,
                'sent': now.timestamp(),
                'eta': None if eta is None else eta.timestamp(),
            })
        # py-amqp's close: connection.close, then waits for close-ok (kombu's
        # own close on leaving the block would swallow a failure).
        connection.connection.close()
    app.close()
    print(json.dumps(sent))


if __name__ == '__main__':
    main()
