"""A minimal Django project holding django-celery-results' tables, for the
interop tests of Celeriac's ``django-db`` result backend.

``CELERIAC_TEST_DJANGO_DB`` names the PostgreSQL database (a
``postgresql://user@host:port/name`` URL); the tests create it and run the
migrations (``python -m django migrate``) before anything else uses it.
"""

import os
from urllib.parse import urlsplit

_url = urlsplit(os.environ.get('CELERIAC_TEST_DJANGO_DB', 'postgresql://postgres@127.0.0.1:5432/postgres'))

SECRET_KEY = 'celeriac-interop-tests-only'
USE_TZ = True
TIME_ZONE = 'UTC'
INSTALLED_APPS = ['django_celery_results']
DEFAULT_AUTO_FIELD = 'django.db.models.AutoField'
DATABASES = {
    'default': {
        'ENGINE': 'django.db.backends.postgresql',
        'NAME': _url.path.lstrip('/'),
        'USER': _url.username or 'postgres',
        'PASSWORD': _url.password or '',
        'HOST': _url.hostname or '127.0.0.1',
        'PORT': str(_url.port or 5432),
    }
}
