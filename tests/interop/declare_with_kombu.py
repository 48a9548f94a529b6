#!/usr/bin/env python3
"""Declare a task queue the way Python Celery does, through kombu.

Usage::

    declare_with_kombu.py <broker-url> <queue> <variant>

``variant`` is one of:

* ``default``  -- ``Queue(q, Exchange(q, type='direct'), routing_key=q)``, what
  a default Celery 5.7 worker or producer declares;
* ``priority`` -- the same with ``queue_arguments={'x-max-priority': 10}``;
* ``quorum``   -- the same with ``queue_arguments={'x-queue-type': 'quorum'}``.

The declaration goes through ``celery.app.amqp`` (``app.amqp.queues``), so
the queue is built by Celery's own code from ``task_queues``, then declared
with kombu as a worker does. Exits 0 on success; on a broker refusal
(e.g. 406 PRECONDITION_FAILED) prints the error and exits 3.
"""

import sys

from celery import Celery
from kombu import Exchange, Queue
from kombu.exceptions import OperationalError
from amqp.exceptions import PreconditionFailed

ARGUMENTS = {
    'default': None,
    'priority': {'x-max-priority': 10},
    'quorum': {'x-queue-type': 'quorum'},
}


def main(url, name, variant):
    app = Celery('declare', broker=url)
    app.conf.task_queues = [
        Queue(name, Exchange(name, type='direct'), routing_key=name,
              queue_arguments=ARGUMENTS[variant]),
    ]
    queue = app.amqp.queues[name]
    with app.connection_for_write() as conn:
        try:
            queue.bind(conn.default_channel).declare()
        except (PreconditionFailed, OperationalError) as exc:
            print(f'refused: {exc}')
            return 3
    print(f'declared {name} ({variant})')
    return 0


if __name__ == '__main__':
    if len(sys.argv) != 4 or sys.argv[3] not in ARGUMENTS:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
