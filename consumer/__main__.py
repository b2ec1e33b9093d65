"""``python -m consumer`` runs ``trs-worker``."""

from consumer.cli import main

main()
