"""Check verdicts.json against the real sample files of the three corpora.

    python tests/data/pickle_corpora/check_upstream.py picklescan=PATH modelscan=PATH modelaudit=PATH

Each PATH is a checkout of that repo (mmaitre314/picklescan, protectai/modelscan,
promptfoo/modelaudit). Scans every file the table names with mirror.policy.scan_file and prints
each verdict that differs, and files the table names that the checkout lacks. Exit 0: all agree.
The samples are not committed here (README.md); tests/mirror/test_policy_corpora.py checks the
same table against reproductions of them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mirror.policy import scan_file


def main(argv: list[str]) -> int:
    roots = dict(a.split("=", 1) for a in argv)
    table = json.loads((Path(__file__).parent / "verdicts.json").read_text())
    bad = 0
    for corpus, root in roots.items():
        for rel, want in sorted(table[corpus].items()):
            path = Path(root) / rel
            if not path.is_file():
                print(f"missing  {corpus}:{rel}")
                bad += 1
                continue
            scan = scan_file(path)
            got = "accepted" if scan.ok else "refused"
            if got != want:
                print(f"{got:9}{corpus}:{rel} (table: {want}) {scan}")
                bad += 1
        print(f"{corpus}: {len(table[corpus])} samples checked")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
