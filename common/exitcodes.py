"""One exit-code table for both command lines (`mirror` and `trainer`), for scripts and CI.

Every typed error carries one of these as its `exit_code`; both CLIs print the table at the end
of their top-level `--help` (each command's own `--help` points there), and the README holds the
same table. A script can tell "fix your arguments" (2) from "the file is damaged" (4) from "not a
bundle at all" (10) without parsing messages.
"""

from __future__ import annotations

OK = 0
FAILED = 1  # an unexpected failure: an I/O error the tool did not foresee
USAGE = 2  # bad arguments, a bad config, bad input data (YAML, JSONL rows, a key file)
UNAVAILABLE = 3  # a repo, revision, file or model that is not there (on the Hub, or offline)
INTEGRITY = 4  # bytes differ from what the manifest or the Hub says (hash, size, a changed commit)
SIGNATURE = 5  # a signature is required and missing, or not valid
POLICY = 6  # refused by policy: pickle imports, remote code
NO_SPACE = 7  # not enough disk space
PREREQUISITE = 8  # something needed first: a delta's base snapshot, a missing package
UNSAFE_CACHE = 9  # the HF cache holds something mirror will not follow (a planted link)
NOT_A_BUNDLE = 10  # not a bundle, or a bundle/manifest/index whose format is unreadable or hostile
NETWORK_BLOCKED = 11  # the trainer's offline guard stopped a connection
NOT_WRITABLE = 12  # the HF cache cannot be written (a read-only mount, no permission)
INTERRUPTED = 130  # 128 + the signal: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP

TABLE = (
    (OK, "success"),
    (FAILED, "unexpected failure (an I/O error)"),
    (USAGE, "bad arguments, config or input data"),
    (UNAVAILABLE, "repo, revision, file or model not found"),
    (INTEGRITY, "bytes differ from the manifest or the Hub"),
    (SIGNATURE, "signature missing or not valid"),
    (POLICY, "refused by policy (pickle, remote code)"),
    (NO_SPACE, "not enough disk space"),
    (PREREQUISITE, "a prerequisite is missing (a delta's base, a package)"),
    (UNSAFE_CACHE, "unsafe HF cache (a planted link)"),
    (NOT_A_BUNDLE, "not a bundle, or an unreadable bundle format"),
    (NETWORK_BLOCKED, "network blocked (trainer's offline guard)"),
    (NOT_WRITABLE, "the HF cache is read-only or not writable"),
    (INTERRUPTED, "interrupted: 128 + signal (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)"),
)


def help_epilog() -> str:
    """The table as the last block of the top-level `--help` (click keeps `\\b` blocks unwrapped)."""
    return "\b\nExit codes:\n" + "\n".join(f"  {code:>3}  {what}" for code, what in TABLE)


def help_pointer(prog: str) -> str:
    """What a command's own `--help` says instead of repeating the whole table."""
    return f"Exit codes: see '{prog} --help' or the README."
