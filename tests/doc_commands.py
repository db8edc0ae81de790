"""Pull the shell commands out of the fenced shell blocks of Markdown files.

Only as much shell as the docs use is understood: backslash continuations,
``#`` comments, ``&&`` / ``||`` / ``;`` / ``|`` / ``&`` between commands,
redirections, ``VAR=value`` prefixes, ``$(...)`` substitutions (each inner
command is reported as a command of its own) and the keywords of a ``for`` /
``if`` / ``while`` around a command. It is not a shell: a line it cannot
tokenize is reported as an error, never guessed at.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "console"})
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
SEPARATORS = frozenset({"&&", "||", ";", "|", "&", ";;"})
REDIRECTS = frozenset({">", ">>", "<", ">&", "<&", "&>", ">|", "<>"})
# Words that open or close a compound command; the command after them is checked.
KEYWORDS = frozenset({"do", "then", "else", "elif", "if", "while", "until", "!", "{", "}"})
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Innermost first, so nested substitutions unwrap one level per pass.
SUBSTITUTION = re.compile(r"\$\(([^()]*)\)")
SUBSTITUTED = "$SUBST"


@dataclass(frozen=True)
class Block:
    """One fenced code block: where its first content line is, its language and lines."""

    path: Path
    first_line: int
    lang: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class DocCommand:
    """One simple command written in a doc.

    Attributes:
        where: ``file:line`` of the line the command starts on.
        text: The whole logical line it came from (continuations joined).
        argv: The program and its arguments, as the shell would pass them;
            a ``$(...)`` inside an argument reads ``$SUBST``.
        env: ``VAR=value`` prefixes of the command.
        error: Why the line could not be split into commands (then ``argv`` is empty).
    """

    where: str
    text: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def program(self) -> str:
        return self.argv[0] if self.argv else ""


def fenced_blocks(path: Path, root: Path) -> Iterator[Block]:
    """Yield every fenced code block of a Markdown file, indented ones included.

    Args:
        path: The Markdown file.
        root: Directory the ``where`` of the commands is relative to.

    Yields:
        The blocks in file order, their lines with the fence's indentation removed.
    """
    opened: tuple[str, str, int, int] | None = None  # fence, lang, indent, first line
    lines: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = FENCE.match(line)
        if opened is None:
            if match:
                opened = (match["fence"], match["lang"].lower(), len(match["indent"]), number + 1)
                lines = []
            continue
        fence, lang, indent, first = opened
        # A closing fence uses the opening character at least as many times, and nothing else.
        if match and match["fence"][0] == fence[0] and len(match["fence"]) >= len(fence) \
                and not match["lang"]:
            yield Block(path.relative_to(root), first, lang, tuple(lines))
            opened = None
            continue
        lines.append(line[indent:] if line[:indent].isspace() else line.lstrip())
    if opened is not None:
        where = f"{path.relative_to(root)}:{opened[3] - 1}"
        raise ValueError(f"{where}: the code fence is never closed")


def logical_lines(block: Block) -> Iterator[tuple[int, str]]:
    """Join backslash continuations; in ``console`` blocks keep only ``$ `` prompt lines.

    Yields:
        ``(line number, text)`` of each logical line that holds something.
    """
    pending: list[str] = []
    start = 0
    for offset, line in enumerate(block.lines):
        if not pending:
            if block.lang == "console":
                if not line.startswith("$ "):
                    continue  # program output, not a command
                line = line[2:]
            start = block.first_line + offset
        if line.rstrip().endswith("\\"):
            pending.append(line.rstrip()[:-1])
            continue
        text = " ".join(part.strip() for part in [*pending, line]).strip()
        pending = []
        if text:
            yield start, text
    if pending:
        yield start, " ".join(part.strip() for part in pending)


def _tokens(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def split_line(text: str) -> list[tuple[tuple[str, ...], dict[str, str]]]:
    """Split one logical shell line into simple commands.

    Args:
        text: The line, continuations already joined.

    Returns:
        ``(argv, env)`` per command, substitutions first, in order of appearance.
        A line of bare assignments (``X=1``) or a lone keyword gives no command.

    Raises:
        ValueError: Unbalanced quotes, or ``(`` / ``)`` outside a ``$(...)``.
    """
    inner: list[str] = []
    while match := SUBSTITUTION.search(text):
        inner.append(match[1])
        text = text[:match.start()] + SUBSTITUTED + text[match.end():]
    commands = [command for line in inner for command in split_line(line)]

    try:
        tokens = _tokens(text)
    except ValueError as exc:
        raise ValueError(f"cannot tokenize {text!r}: {exc}") from None
    if any(token in ("(", ")") for token in tokens):
        raise ValueError(f"subshells and functions are not understood: {text!r}")

    current: list[str] = []
    for token in [*tokens, ";"]:
        if token in SEPARATORS:
            commands.extend(_simple_command(current))
            current = []
        else:
            current.append(token)
    return commands


def _simple_command(tokens: list[str]) -> list[tuple[tuple[str, ...], dict[str, str]]]:
    words: list[str] = []
    skip_target = False
    for token in tokens:
        if skip_target:
            skip_target = False
        elif token in REDIRECTS:
            skip_target = True  # the file after a redirection is no argument
        else:
            words.append(token)
    while words and words[0] in KEYWORDS:
        words = words[1:]
    env: dict[str, str] = {}
    while words and ASSIGNMENT.match(words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    if not words or words == ["done"] or words == ["fi"]:
        return []
    return [(tuple(words), env)]


def doc_commands(paths: list[Path], root: Path) -> list[DocCommand]:
    """Every command of every shell block of the given Markdown files.

    A line that cannot be split becomes one :class:`DocCommand` carrying the
    error, so the test reports it at its line instead of failing collection.
    """
    found: list[DocCommand] = []
    for path in paths:
        for block in fenced_blocks(path, root):
            if block.lang not in SHELL_LANGUAGES:
                continue
            for number, text in logical_lines(block):
                where = f"{block.path}:{number}"
                try:
                    split = split_line(text)
                except ValueError as exc:
                    found.append(DocCommand(where, text, (), error=str(exc)))
                    continue
                found.extend(DocCommand(where, text, argv, env) for argv, env in split)
    return found
