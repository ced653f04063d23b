"""demoapp: the salt-consul example application (stdlib only)."""

__version__ = "0.1.0"
