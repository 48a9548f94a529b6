"""Python Celery's producer baseline for celeriac-bench.

Sends ``--count`` ``interop.add(1, 2)`` tasks with ``app.send_task`` to
``--queue`` and prints the seconds the loop took as JSON. One warm-up send
opens the connection before the clock starts. Celery publishes without
publisher confirms unless ``broker_transport_options`` asks for them, as in
a default deployment.
"""

import argparse
import json
import os
import time

from celery import Celery


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--queue', required=True)
    parser.add_argument('--count', type=int, required=True)
    args = parser.parse_args()
    app = Celery('bench', broker=os.environ['CELERIAC_BROKER_URL'])
    app.send_task('interop.add', (1, 2), queue=args.queue)
    start = time.perf_counter()
    for _ in range(args.count):
        app.send_task('interop.add', (1, 2), queue=args.queue)
    print(json.dumps({'seconds': time.perf_counter() - start}))


if __name__ == '__main__':
    main()
