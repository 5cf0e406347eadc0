"""Recorded benchmark notes agree with the command output they record."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_transformer_note_gives_the_character_counts_its_recorded_output_prints():
    text = (ROOT / "benchmarks" / "transformer.md").read_text()
    prose = re.search(r"corpus: ([\d,]+) training / ([\d,]+) validation characters", text)
    printed = re.search(r"characters of \w+: (\d+) train / (\d+) valid", text)  # bench_transformer's own line
    assert prose and printed
    assert [int(n.replace(",", "")) for n in prose.groups()] == [int(n) for n in printed.groups()]
