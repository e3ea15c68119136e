"""The queue's deadline arithmetic in O(log n): a treap in earliest-deadline order with running sums.

With ``m`` servers draining queued work in deadline order, queued request j (deadline d_j, own planning time
f_j, expected work e_j) finishes on time when

    now + (W0 + S_<j) / m + f_j <= d_j   <=>   B_j := m (d_j - f_j) - S_<j  >=  m now + W0

where W0 is the work still in flight and S_<j the expected work queued ahead of j. Admission and the exit
choice both ask the same two questions: how much work is ahead of a deadline (a prefix sum), and what is the
smallest B_j among the requests behind it (a suffix minimum), since a new request or a deeper exit shifts all of
them by its extra work. Each node keeps its subtree's work and the minimum of ``m (d - f) - (work before it
within the subtree)``, so both questions are one walk from the root, and inserting or removing a request only
updates one path. Requests that can no longer make their deadline are *demoted*: they keep their place and their
work, but stop vetoing others (protecting a request that is late anyway would only make more requests late).
"""

from __future__ import annotations

import math
import random

INF = math.inf


class Node:
    __slots__ = ("key", "e", "w", "protected", "prio", "left", "right", "sum", "mn", "item")

    def __init__(self, key: tuple, e: float, w: float, item, protected: bool, prio: float):
        self.key, self.e, self.w, self.item, self.protected, self.prio = key, e, w, item, protected, prio
        self.left = self.right = None
        self.sum, self.mn = e, (w if protected else INF)


def _pull(n: Node) -> None:
    left, right = n.left, n.right
    before = left.sum if left is not None else 0.0
    total = before + n.e
    mn = left.mn if left is not None else INF
    if n.protected and n.w - before < mn:
        mn = n.w - before
    if right is not None:
        total += right.sum
        if right.mn - before - n.e < mn:
            mn = right.mn - before - n.e
    n.sum, n.mn = total, mn


class SlackTree:
    """Queued requests keyed by (deadline, sequence); see the module docstring for what it answers."""

    def __init__(self, seed: int = 0):
        self.root: Node | None = None
        self.size = 0
        self._rng = random.Random(seed)  # treap priorities: seeded, so runs (and simulations) repeat exactly

    # -- queries -----------------------------------------------------------------------------------------
    @property
    def total(self) -> float:
        return self.root.sum if self.root is not None else 0.0

    @property
    def min_slack(self) -> float:
        """min over protected requests of B_j (with W0 = 0 and now = 0 folded out); INF when none."""
        return self.root.mn if self.root is not None else INF

    def around(self, key: tuple) -> tuple[float, float]:
        """(work queued before ``key``, min B_j over protected requests after ``key``): one walk down."""
        n, offset, after = self.root, 0.0, INF
        while n is not None:
            before = offset + (n.left.sum if n.left is not None else 0.0)
            if key < n.key:
                if n.protected and n.w - before < after:
                    after = n.w - before
                if n.right is not None and n.right.mn - before - n.e < after:
                    after = n.right.mn - before - n.e
                n = n.left
            else:
                offset = before + n.e
                n = n.right
        return offset, after

    def argmin_after(self, key: tuple | None = None) -> Node | None:
        """The protected node with the smallest B_j among keys after ``key`` (all nodes when None)."""
        best, best_val = None, INF
        n, offset = self.root, 0.0
        # Walk the path to ``key``; every subtree entirely after it is a candidate, resolved below.
        candidates: list[tuple[float, Node, float]] = []  # (value, subtree root or node, its offset)
        while n is not None:
            before = offset + (n.left.sum if n.left is not None else 0.0)
            if key is None or key < n.key:
                if n.protected and n.w - before < best_val:
                    best, best_val = n, n.w - before
                if n.right is not None:
                    candidates.append((n.right.mn - before - n.e, n.right, before + n.e))
                if key is None:
                    if n.left is not None:
                        candidates.append((n.left.mn - offset, n.left, offset))
                    break
                n = n.left
            else:
                offset = before + n.e
                n = n.right
        for value, sub, _ in candidates:
            if value < best_val:
                best, best_val = _descend_min(sub), value
        return best

    def items(self) -> list:
        """Queued items in deadline order (O(n); for rebuilds and inspection, not for decisions)."""
        out, stack, n = [], [], self.root
        while stack or n is not None:
            while n is not None:
                stack.append(n)
                n = n.left
            n = stack.pop()
            out.append(n.item)
            n = n.right
        return out

    # -- updates -----------------------------------------------------------------------------------------
    def insert(self, key: tuple, e: float, w: float, item, protected: bool = True) -> Node:
        node = Node(key, e, w, item, protected, self._rng.random())
        self.root = _insert(self.root, node)
        self.size += 1
        return node

    def remove(self, key: tuple) -> bool:
        self.root, removed = _remove(self.root, key)
        self.size -= removed
        return removed

    def set_protected(self, key: tuple, protected: bool) -> None:
        _update(self.root, key, lambda n: setattr(n, "protected", protected))

    def clear(self) -> None:
        self.root, self.size = None, 0


def _descend_min(n: Node) -> Node:
    """The protected node achieving ``n.mn`` in subtree ``n``: follow the branch ``_pull`` took the minimum from
    (the same expressions, so the comparison is exact)."""
    while True:
        before = n.left.sum if n.left is not None else 0.0
        if n.left is not None and n.left.mn == n.mn:
            n = n.left
        elif n.protected and n.w - before == n.mn:
            return n
        else:
            n = n.right


def _split(t: Node | None, key: tuple) -> tuple[Node | None, Node | None]:
    """(keys < key, keys >= key)."""
    if t is None:
        return None, None
    if t.key < key:
        a, b = _split(t.right, key)
        t.right = a
        _pull(t)
        return t, b
    a, b = _split(t.left, key)
    t.left = b
    _pull(t)
    return a, t


def _merge(a: Node | None, b: Node | None) -> Node | None:
    if a is None:
        return b
    if b is None:
        return a
    if a.prio > b.prio:
        a.right = _merge(a.right, b)
        _pull(a)
        return a
    b.left = _merge(a, b.left)
    _pull(b)
    return b


def _insert(t: Node | None, node: Node) -> Node:
    if t is None:
        return node
    if node.prio > t.prio:
        node.left, node.right = _split(t, node.key)
        _pull(node)
        return node
    if node.key < t.key:
        t.left = _insert(t.left, node)
    else:
        t.right = _insert(t.right, node)
    _pull(t)
    return t


def _remove(t: Node | None, key: tuple) -> tuple[Node | None, bool]:
    if t is None:
        return None, False
    if key == t.key:
        return _merge(t.left, t.right), True
    if key < t.key:
        t.left, removed = _remove(t.left, key)
    else:
        t.right, removed = _remove(t.right, key)
    if removed:
        _pull(t)
    return t, removed


def _update(t: Node | None, key: tuple, change) -> bool:
    if t is None:
        return False
    if key == t.key:
        change(t)
        found = True
    else:
        found = _update(t.left if key < t.key else t.right, key, change)
    if found:
        _pull(t)
    return found
