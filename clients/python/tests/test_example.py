"""The README's five-minute example (examples/bank.py) runs as written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from unittest import TestCase

from support import ENV, fresh_store

EXAMPLE = Path(__file__).parent.parent / "examples" / "bank.py"


class TestBankExample(TestCase):
    def test_the_application_and_its_projection_agree(self) -> None:
        fresh_store()
        result = subprocess.run(
            [sys.executable, str(EXAMPLE)],
            env={**os.environ, **ENV},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        self.assertEqual(
            result.stdout.splitlines(),
            [
                "Alice's balance, from her events: 42.50",
                "Every balance, from the projection's table: 42.50",
            ],
        )
