"""The web console: bucket and encryption management in a browser, over the key-level core."""
