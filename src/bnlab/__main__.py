"""``python -m bnlab``: the command-line interface (also used under ``torchrun -m bnlab``)."""

from bnlab.cli.main import main

raise SystemExit(main())
