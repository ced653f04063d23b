"""Settings shared by every environment."""

DEBUG = False
LOG_LEVEL = "INFO"
DB_POOL_SIZE = 5
