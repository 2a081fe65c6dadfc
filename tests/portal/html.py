"""A small DOM over the standard library's HTML parser: enough to read forms, ids and text, and to check
the rules every portal page keeps (accessibility basics, nothing the Content-Security-Policy would block)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Node | str] = field(default_factory=list)
    parent: Node | None = None

    def iter(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def text(self) -> str:
        parts = []
        for child in self.children:
            parts.append(child if isinstance(child, str) else child.text())
        return " ".join(" ".join(parts).split())

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        want = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
        return [
            n for n in self.iter()
            if (tag is None or n.tag == tag) and all(n.attrs.get(k) == v for k, v in want.items())
        ]  # fmt: skip

    def find(self, tag: str | None = None, **attrs: str) -> Node | None:
        found = self.find_all(tag, **attrs)
        return found[0] if found else None

    def by_id(self, element_id: str) -> Node:
        found = self.find_all(id=element_id)
        assert len(found) == 1, f"{len(found)} elements with id {element_id!r}"
        return found[0]

    def ancestors(self) -> Iterator[Node]:
        node = self.parent
        while node is not None:
            yield node
            node = node.parent


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document")
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v if v is not None else "" for k, v in attrs}, parent=self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Node(tag, {k: v or "" for k, v in attrs}, parent=self.current))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.current.children.append(data)


def parse(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root


def form_fields(form: Node) -> list[tuple[str, str]]:
    """What a browser would submit from ``form`` by default (no button value)."""
    out: list[tuple[str, str]] = []
    for node in form.iter():
        name = node.attrs.get("name")
        if not name or "disabled" in node.attrs:
            continue
        if node.tag == "input":
            kind = node.attrs.get("type", "text")
            if kind in {"submit", "button", "reset", "image"}:
                continue
            if kind in {"checkbox", "radio"} and "checked" not in node.attrs:
                continue
            out.append((name, node.attrs.get("value", "on" if kind in {"checkbox", "radio"} else "")))
        elif node.tag == "select":
            options = node.find_all("option")
            chosen = [o for o in options if "selected" in o.attrs] or options[:1]
            out += [(name, o.attrs.get("value", o.text())) for o in chosen]
        elif node.tag == "textarea":  # its text as written (a PEM keeps its lines)
            out.append((name, "".join(c for c in node.children if isinstance(c, str))))
    return out


LANDMARK_TAGS = {"main", "nav", "header", "footer"}
LABELLED = {"input", "select", "textarea"}
NOT_LABELLED_INPUTS = {"hidden", "submit", "button", "reset", "image"}


def a11y_problems(doc: Node) -> list[str]:
    """Accessibility basics: lang, one h1, landmarks, a skip link, labels, names, alt, no positive tabindex,
    heading levels that never skip."""
    problems = []
    html = doc.find("html")
    if html is None or not html.attrs.get("lang"):
        problems.append("<html> has no lang")
    h1s = doc.find_all("h1")
    if len(h1s) != 1:
        problems.append(f"{len(h1s)} h1 elements (want one)")
    for tag in ("main", "nav", "header", "footer"):
        if not doc.find_all(tag):
            problems.append(f"no <{tag}> landmark")
    if len(doc.find_all("main")) > 1:
        problems.append("several <main>")
    links = doc.find_all("a")
    if not links or links[0].attrs.get("href") != "#main" or doc.find(id="main") is None:
        problems.append("the first link is not a skip link to #main")
    labels_for = {n.attrs.get("for") for n in doc.find_all("label")}
    for node in doc.iter():
        if node.tag in LABELLED and node.attrs.get("type", "text") not in NOT_LABELLED_INPUTS:
            named = (
                node.attrs.get("id") in labels_for
                or node.attrs.get("aria-label")
                or node.attrs.get("aria-labelledby")
                or any(a.tag == "label" for a in node.ancestors())
            )
            if not named:
                problems.append(f"<{node.tag} name={node.attrs.get('name')!r}> has no label")
        tabindex = node.attrs.get("tabindex")
        if tabindex is not None and tabindex.lstrip("-").isdigit() and int(tabindex) > 0:
            problems.append(f"<{node.tag}> has a positive tabindex")
        if node.tag == "img" and "alt" not in node.attrs:
            problems.append("<img> without alt")
        named_svg = node.attrs.get("role") == "img" and (
            node.attrs.get("aria-label") or node.attrs.get("aria-labelledby")
        )
        if node.tag == "svg" and node.attrs.get("aria-hidden") != "true" and not named_svg:
            problems.append("<svg> without role=img and an accessible name")
        if node.tag in {"button", "a"} and not (node.text() or node.attrs.get("aria-label")):
            problems.append(f"<{node.tag}> without text")
    levels = [int(n.tag[1]) for n in doc.iter() if n.tag in {"h1", "h2", "h3", "h4", "h5", "h6"}]
    for before, after in itertools.pairwise(levels):
        if after > before + 1:
            problems.append(f"heading level jumps from h{before} to h{after}")
    ids = [n.attrs["id"] for n in doc.iter() if "id" in n.attrs]
    if len(ids) != len(set(ids)):
        problems.append(f"duplicate ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    return problems


def csp_problems(doc: Node) -> list[str]:
    """What a CSP without 'unsafe-inline' would block: inline scripts, style elements, style and on* attributes."""
    problems = []
    for node in doc.iter():
        if node.tag == "script" and ("src" not in node.attrs or node.text()):
            problems.append("an inline <script>")
        if node.tag == "style":
            problems.append("a <style> element")
        if "style" in node.attrs:
            problems.append(f"<{node.tag} style=...>")
        problems += [f"<{node.tag} {name}=...>" for name in node.attrs if name.startswith("on")]
        for name in ("href", "src", "action"):
            if node.attrs.get(name, "").strip().lower().startswith("javascript:"):
                problems.append(f"<{node.tag} {name}=javascript:...>")
    return problems
