"""One name per idea on the command line, and the old spellings that still work for one release.

The words every command shares (tsf_trt/cli/params.py): `--backend`, `--precision`, `--batch-size`,
`--frame` name one runtime setting each, and take a comma list where a command measures several
(`bench`); `--inputs` is one subject's files, `--data` a folder of subjects (infer, evaluate,
calibrate, train, export --int8-data); `--subject-name` names one subject (infer), `--subject-dir`
is one subject's folder (bench); a volume's shape is `X Y Z` (three numbers, the file's axes), a
slice's size `HxW` (--frame, engines build --min-size ...).

:data:`RENAMED` lists each command's old option names; :class:`RenamedCommand` (and bench's group)
rewrites them before click parses, and each one used is said once, as a warning naming the new
one (:func:`tsf_trt.console.deprecated`: stderr or --log-file, never stdout). Old spellings that
depend on the value (`infer --inputs FOLDER`, `bench --shape SxHxW`, `engines build --device N`)
are noted by the command itself, where it reads the value.
"""

from __future__ import annotations

from collections.abc import Collection

from typer.core import TyperCommand

from tsf_trt.console import deprecated, say_deprecations

#: Command name -> {old option name: new option name}. Kept for one release, then removed.
RENAMED: dict[str, dict[str, str]] = {
    "infer": {"--subject": "--subject-name", "--session": "--session-label"},
    "bench": {"--backends": "--backend", "--batch-sizes": "--batch-size", "--precisions": "--precision",
              "--frames": "--frame", "--decoders": "--decoder", "--subject": "--subject-dir"},
}


def renamed(command: str, args: list[str], stop: Collection[str] = ()) -> list[str]:
    """`args` with `command`'s old option names (also as `--old=value`) replaced by the new ones,
    each noted once; nothing after `--` or after a word in `stop` (a group's subcommand, whose
    options are its own) is looked at."""
    table = RENAMED.get(command, {})
    words: list[str] = []
    for k, word in enumerate(args):
        if word == "--" or word in stop:
            return words + args[k:]
        name, eq, value = word.partition("=")
        if name in table:
            deprecated(name, table[name])
            word = table[name] + eq + value
        words.append(word)
    return words


class RenamedCommand(TyperCommand):
    """A command that still reads its old option names (:data:`RENAMED`), saying so once."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, renamed(self.name or "", list(args)))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        finally:
            say_deprecations()  # a command that set up no log of its own: said on the default one
