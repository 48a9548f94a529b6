"""One result-backend URL for both languages in the interop tests.

Celeriac names django-celery-results' database in its URL
(``django-db+postgresql://user@host/db``); Python's ``django-db`` takes it
from Django's settings. ``celery_backend(url)`` turns the first into the
second: it points ``django_results.settings`` at that database, sets Django
up and returns ``'django-db'``. Any other URL is returned unchanged.
"""

import os

PREFIX = 'django-db+'


def celery_backend(url):
    """The Celery ``backend=`` for Celeriac's backend ``url``."""
    if not url.startswith(PREFIX):
        return url
    os.environ['CELERIAC_TEST_DJANGO_DB'] = url[len(PREFIX):]
    os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'django_results.settings')
    import django

    django.setup()
    return 'django-db'
