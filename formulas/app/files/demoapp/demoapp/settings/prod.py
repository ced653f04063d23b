from demoapp.settings.base import *  # noqa: F401,F403

DB_POOL_SIZE = 20
