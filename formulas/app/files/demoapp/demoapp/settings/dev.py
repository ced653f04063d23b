from demoapp.settings.base import *  # noqa: F401,F403

DEBUG = True
LOG_LEVEL = "DEBUG"
