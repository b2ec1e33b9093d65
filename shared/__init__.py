"""The TRS contract and engine, shared by the client (``producer``) and the worker (``consumer``)."""
