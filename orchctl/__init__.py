"""orchctl: the command-line client (one module per verb group) and the local demo."""
