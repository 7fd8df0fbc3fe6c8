"""Built-in DServices. A DService is an HTTP/1.1 server listening where ``CGN_LISTEN`` says:
``host:port`` on loopback, or ``unix:/path/to.sock``."""
