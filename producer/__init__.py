"""The TRS client library."""
