"""Per-environment settings: ``demoapp.settings.<type>``, chosen by the config file."""
