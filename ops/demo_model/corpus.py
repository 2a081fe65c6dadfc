"""The training corpus: docstrings and comments of the running interpreter's standard library, cleaned,
plus chat exchanges made from them; a few files held out for validation.
"""

from __future__ import annotations

import ast
import io
import os
import random
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator


__all__ = ["Corpus", "clean_comment", "clean_docstring", "collect_corpus", "first_paragraph"]

# Source files always kept in the training split: the demo prompts ask about them.
ALWAYS_TRAIN = {"os.py"}
SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3"}


@dataclass
class Corpus:
    """Training and validation documents.

    Attributes:
        train_text: plain-text documents (docstrings, comment blocks) for training.
        train_chat: (question, answer) pairs for training.
        val_text: held-out plain-text documents.
        val_chat: held-out (question, answer) pairs.
        files: source files read (training, validation).
    """

    train_text: list[str]
    train_chat: list[tuple[str, str]]
    val_text: list[str]
    val_chat: list[tuple[str, str]]
    files: tuple[int, int]


_RST_ROLE = re.compile(r":[a-zA-Z:]+:`~?!?([^`<]+?)(?:\s*<[^`]*>)?`")
_DOUBLE_BACKTICK = re.compile(r"``([^`]+)``")
_BULLET = re.compile(r"^\s*(?:[-*+\u2022]|\d+[.)]|\(\w\))\s")
_CODEISH = re.compile(r"==|!=|[=\[\]{}<>]|\w\(|\bself\.|\breturn\b\s+\w+\(|^\s*(?:def|class|import|from)\s")
_WORD = re.compile(r"[A-Za-z][a-z]+")


def _prose_ratio(text: str) -> float:
    """Fraction of characters that are letters, spaces or ordinary punctuation."""
    if not text:
        return 0.0
    ok = sum(1 for c in text if c.isalpha() or c in " .,;:'\"!?()-/\n")
    return ok / len(text)


def _simplify_markup(text: str) -> str:
    """Replace reStructuredText roles and literals by their text."""
    text = _RST_ROLE.sub(r"\1", text)
    return _DOUBLE_BACKTICK.sub(r"\1", text)


def clean_docstring(doc: str) -> str:
    """Clean a docstring (already dedented by :func:`ast.get_docstring`).

    Paragraphs whose lines share one indentation and are not list items are reflowed into one line; others keep
    their line breaks.  Doctest paragraphs and paragraphs that are mostly code or symbols are dropped; runs of
    spaces collapse to one.

    Args:
        doc: the docstring.

    Returns:
        The cleaned text ('' when nothing is left).
    """
    out: list[str] = []
    for para in re.split(r"\n[ \t]*\n", _simplify_markup(doc.strip())):
        lines = [ln.rstrip() for ln in para.splitlines() if ln.strip()]
        if not lines or any(ln.lstrip().startswith((">>>", "...", "$ ", "%")) for ln in lines):
            continue
        joined = " ".join(ln.strip() for ln in lines)
        if _prose_ratio(joined) < 0.85 or len(_WORD.findall(joined)) < 2:
            continue
        indents = {len(ln) - len(ln.lstrip()) for ln in lines}
        if len(indents) == 1 and not any(_BULLET.match(ln) for ln in lines[1:]):
            out.append(re.sub(r"\s+", " ", joined))
        else:
            base = min(indents)
            kept = []
            for ln in lines:
                indent = min(len(ln) - len(ln.lstrip()) - base, 8)
                kept.append(" " * indent + re.sub(r"\s+", " ", ln.strip()))
            out.append("\n".join(kept))
    return "\n\n".join(out)


def first_paragraph(text: str, limit: int = 320) -> str:
    """The first paragraph of cleaned text as one line, cut at a sentence end near ``limit`` characters."""
    para = re.sub(r"\s+", " ", text.split("\n\n", 1)[0]).strip()
    if len(para) <= limit:
        return para
    cut = para.rfind(". ", 0, limit)
    return para[: cut + 1] if cut > limit // 3 else ""


def _comment_blocks(source: str) -> Iterator[str]:
    """Blocks of consecutive full-line comments of a source file, as prose."""
    block: list[str] = []
    last_row = -2
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return
    line_starts: dict[int, int] = {}
    for tok in tokens:
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            line_starts.setdefault(tok.start[0], tok.start[1])
    for tok in tokens:
        if tok.type != tokenize.COMMENT:
            continue
        row = tok.start[0]
        full_line = row not in line_starts or line_starts[row] > tok.start[1]
        text = tok.string.lstrip("#").strip()
        if not full_line or row != last_row + 1:
            if block:
                yield " ".join(block)
            block = []
        if full_line and text and not set(text) <= set("-=*#~_+ "):
            block.append(text)
        last_row = row if full_line else -2
    if block:
        yield " ".join(block)


def clean_comment(block: str) -> str:
    """Keep a comment block that reads as English prose ('' otherwise)."""
    text = re.sub(r"\s+", " ", _simplify_markup(block)).strip()
    lowered = text.lower()
    if len(text) < 30 or len(_WORD.findall(text)) < 5:
        return ""
    if any(w in lowered for w in ("copyright", "license", "all rights reserved", "-*-", "noqa", "type: ignore")):
        return ""
    if _CODEISH.search(text) or _prose_ratio(text) < 0.9:
        return ""
    return text


_MODULE_QUESTIONS = (
    "What does the {m} module do?",
    "What is the {m} module for?",
    "Tell me about the {m} module.",
    "What is {m}?",
)
_FUNCTION_QUESTIONS = ("What does {m}.{f}() do?", "What does {f} do in {m}?", "Explain {m}.{f}.")
_CLASS_QUESTIONS = ("What is {m}.{f}?", "What does the {f} class in {m} do?", "Describe {m}.{f}.")


def _module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _file_documents(path: Path, rel: Path, rng: random.Random) -> tuple[list[str], list[tuple[str, str]]]:
    """Plain-text documents and chat pairs of one source file."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return [], []
    module = _module_name(rel)
    public_module = not any(p.startswith("_") for p in module.split("."))
    docs: list[str] = []
    chats: list[tuple[str, str]] = []

    def visit(node: ast.AST, qual: str) -> None:
        doc = None
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
        if doc:
            text = clean_docstring(doc)
            if len(text) >= 20:
                docs.append(text)
                answer = first_paragraph(text)
                if public_module and len(answer) >= 25 and answer[0].isupper():
                    if isinstance(node, ast.Module):
                        chats.append((rng.choice(_MODULE_QUESTIONS).format(m=module), answer))
                    elif not any(part.startswith("_") for part in qual.split(".")):
                        templates = _CLASS_QUESTIONS if isinstance(node, ast.ClassDef) else _FUNCTION_QUESTIONS
                        chats.append((rng.choice(templates).format(m=module, f=qual), answer))
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, f"{qual}.{child.name}" if qual else child.name)

    visit(tree, "")
    comments = [c for c in (clean_comment(b) for b in _comment_blocks(source)) if c]
    if comments:
        docs.append("\n".join(comments))
    return docs, chats


def collect_corpus(stdlib: Path, val_fraction: float, seed: int) -> Corpus:
    """Collect the standard library's docstrings and comments, split by source file.

    Args:
        stdlib: the standard library directory.
        val_fraction: the share of source files held out for validation.
        seed: seeds the split and the choice of question wordings.

    Returns:
        The corpus.
    """
    files: list[Path] = []
    for d, dirs, names in os.walk(stdlib):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS and not x.startswith("."))
        files.extend(Path(d) / n for n in sorted(names) if n.endswith(".py") and not n.startswith("test_"))
    rng = random.Random(seed)
    corpus = Corpus([], [], [], [], (0, 0))
    n_train = n_val = 0
    for path in files:
        rel = path.relative_to(stdlib)
        is_val = rng.random() < val_fraction and str(rel) not in ALWAYS_TRAIN
        docs, chats = _file_documents(path, rel, rng)
        if is_val:
            corpus.val_text.extend(docs)
            corpus.val_chat.extend(chats)
            n_val += 1
        else:
            corpus.train_text.extend(docs)
            corpus.train_chat.extend(chats)
            n_train += 1
    corpus.files = (n_train, n_val)
    return corpus
