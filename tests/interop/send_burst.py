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
null}, ...]`` in send order.
"""

import argparse
import json
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
    if a.broadcast:
        from kombu.common import Broadcast

        app.conf.task_queues = (Broadcast(a.queue),)
    args = [] if a.arg is None else [a.arg]
    sent = []
    with app.producer_or_acquire() as producer:
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
    app.close()
    print(json.dumps(sent))


if __name__ == '__main__':
    main()
