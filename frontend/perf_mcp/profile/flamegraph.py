"""Render folded stacks as a static flame graph SVG (pure).

Root at the bottom, each frame's width proportional to its samples, one
<title> per frame with its sample count and share. No script inside: the SVG is
plain shapes and text, so any viewer can show it safely. Frames narrower than
MIN_WIDTH_PX are left out (their samples stay in their parent's width), which
bounds the size of the file for huge profiles.
"""

from __future__ import annotations

import hashlib
import re
from xml.sax.saxutils import escape, quoteattr

WIDTH = 1200
FRAME_H = 16
PAD_TOP = 44
PAD_BOTTOM = 10
PAD_SIDE = 10
MIN_WIDTH_PX = 0.1
CHAR_PX = 7.0
FONT = "Verdana, DejaVu Sans, sans-serif"

_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _clean(s: str) -> str:
    return _XML_BAD.sub("?", s)


class _Node:
    __slots__ = ("name", "count", "children")

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.children: dict[str, _Node] = {}


def build_tree(stacks: dict[str, int]) -> _Node:
    root = _Node("all")
    for stack, count in stacks.items():
        root.count += count
        node = root
        for frame in stack.split(";"):
            child = node.children.get(frame)
            if child is None:
                child = node.children[frame] = _Node(frame)
            child.count += count
            node = child
    return root


def _colour(name: str, kernel: bool) -> str:
    h = hashlib.blake2s(name.encode(), digest_size=2).digest()
    v1, v2 = h[0] / 255, h[1] / 255
    if name.startswith("[") and name.endswith("]"):
        g = int(180 + 40 * v1)
        return f"rgb({g},{g},{g})"
    if kernel:  # orange: kernel code
        return f"rgb({int(220 + 35 * v1)},{int(120 + 60 * v2)},{int(30 + 30 * v1)})"
    return f"rgb({int(205 + 50 * v1)},{int(80 + 130 * v2)},{int(40 * v1)})"  # red-yellow: user code


def render_svg(stacks: dict[str, int], *, title: str = "CPU flame graph", subtitle: str = "",
               kernel_frames: frozenset[str] = frozenset()) -> str:
    root = build_tree(stacks)
    total = root.count
    inner = WIDTH - 2 * PAD_SIDE
    scale = inner / total if total else 0.0
    rects: list[tuple[int, float, float, _Node]] = []  # depth, x, width, node
    max_depth = 0
    todo: list[tuple[_Node, int, float]] = [(root, 0, float(PAD_SIDE))]
    while todo:
        node, depth, x = todo.pop()
        w = node.count * scale
        if w < MIN_WIDTH_PX:
            continue
        rects.append((depth, x, w, node))
        max_depth = max(max_depth, depth)
        cx = x
        for child in sorted(node.children.values(), key=lambda n: n.name):
            todo.append((child, depth + 1, cx))
            cx += child.count * scale
    height = PAD_TOP + (max_depth + 1) * FRAME_H + PAD_BOTTOM
    out: list[str] = [
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n',
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family={quoteattr(FONT)} font-size="12">\n',
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#f8f8f8"/>\n',
        f'<text x="{WIDTH / 2:.0f}" y="20" text-anchor="middle" font-size="16">{escape(_clean(title))}</text>\n',
        f'<text x="{WIDTH / 2:.0f}" y="36" text-anchor="middle" fill="#555">{escape(_clean(subtitle))}</text>\n',
    ]
    for depth, x, w, node in sorted(rects, key=lambda r: (r[0], r[1])):
        y = height - PAD_BOTTOM - (depth + 1) * FRAME_H
        name = _clean(node.name)
        pct = 100.0 * node.count / total
        label = f"{name} ({node.count} samples, {pct:.2f}%)"
        fill = "rgb(240,240,240)" if depth == 0 else _colour(node.name, node.name in kernel_frames)
        out.append(f'<g><title>{escape(label)}</title>'
                   f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{FRAME_H - 1}" fill="{fill}" rx="2"/>')
        chars = int((w - 6) / CHAR_PX)
        if chars >= 3:
            text = name if len(name) <= chars else name[: chars - 2] + ".."
            out.append(f'<text x="{x + 3:.2f}" y="{y + FRAME_H - 4}">{escape(text)}</text>')
        out.append("</g>\n")
    out.append("</svg>\n")
    return "".join(out)
