"""The base of every error a user can cause, in both packages.

An error carries the exit code its command ends with (one of `common.exitcodes`, the one table
both command lines share) and a message that says what happened, why, and what to do. Each
package subclasses it once (`mirror.errors.MirrorError`, `trainer.errors.TrainerError`), and
each subclass also inherits the builtin that matches its concern, as huggingface_hub's do.

`about()` is how code that does not know the concrete class (the bounded JSON reader, the safe
file reader) builds one: the class decides how `where`, `reason` and `fix` make its message.
"""

from __future__ import annotations

from common import exitcodes


class ToolError(Exception):
    exit_code = exitcodes.FAILED

    @classmethod
    def about(cls, where: str, reason: str, fix: str | None = None) -> "ToolError":
        """This error for `reason` at `where` (a file, a bundle), ending with `fix` when given."""
        return cls(f"{where}: {reason}" + (f"; {fix}" if fix else ""))


__all__ = ["ToolError"]
