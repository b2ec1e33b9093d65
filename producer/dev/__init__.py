"""Tools for tests and a laptop, not for production: the embedded broker, a dev cluster and a demo fleet."""
