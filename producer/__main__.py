"""``python -m producer`` runs ``trs``."""

from producer.cli import main

main()
