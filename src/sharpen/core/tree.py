"""One data model for everything search produces: a tree of steps.

Best-of-N is a tree of depth one; beam search, MCTS and particle filtering grow deeper trees.
Voting, step credit, preference pairs, the report and the viewer all read trees, so no later
stage needs to know which algorithm produced one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Node:
    id: int
    parent: int | None
    step: str = ""  # the step text, without the trailing delimiter ("" for the root)
    token_ids: list[int] = field(default_factory=list)
    num_tokens: int = 0
    logprob: float = 0.0  # summed token log-probability of the step under the policy
    prior: float = 1.0  # the step's policy probability normalised among its siblings (PUCT prior)
    depth: int = 0
    children: list[int] = field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    score: float | None = None  # the scorer's value of this node, in [0, 1]
    terminal: bool = False
    answer: str | None = None  # extracted answer, for terminal nodes
    correct: bool | None = None  # set only by the task verifier (oracle / evaluation)
    finish_reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def q(self) -> float | None:
        """Mean backed-up value (MCTS Q), or None if never visited."""
        return self.value_sum / self.visits if self.visits else None

    @property
    def value(self) -> float | None:
        """Best available value estimate: Q when visited, else the scorer's score."""
        return self.q if self.visits else self.score


@dataclass
class Tree:
    problem_id: str
    question: str
    prompt: str = ""  # the rendered prompt the steps continue
    reference: str | None = None  # the reference answer; search algorithms never read it
    nodes: list[Node] = field(default_factory=list)
    algo: str = ""
    scorer: str | None = None  # the scorer spec the search used (None: none, e.g. vote)
    split: str | None = None  # the split its problem was drawn from: "train" or "test" (None: unknown)
    answer: str | None = None  # the algorithm's final answer
    chosen: list[int] = field(default_factory=list)  # node ids of the chosen path (root excluded)
    correct: bool | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.nodes:
            self.nodes.append(Node(id=0, parent=None))

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def add(self, parent: int, **fields: Any) -> Node:
        node = Node(id=len(self.nodes), parent=parent, depth=self.nodes[parent].depth + 1, **fields)
        self.nodes.append(node)
        self.nodes[parent].children.append(node.id)
        return node

    def path(self, node_id: int) -> list[Node]:
        """Nodes from the first step to `node_id` (root excluded)."""
        out = []
        n: Node | None = self.nodes[node_id]
        while n is not None and n.parent is not None:
            out.append(n)
            n = self.nodes[n.parent]
        return out[::-1]

    def text(self, node_id: int, delimiter: str = "\n") -> str:
        """The solution so far: the steps on the path joined by the delimiter."""
        return delimiter.join(n.step for n in self.path(node_id))

    def terminals(self) -> list[Node]:
        return [n for n in self.nodes if n.terminal]

    def leaves(self) -> list[Node]:
        return [n for n in self.nodes if not n.children and n.parent is not None]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tree:
        d = dict(d)
        d["nodes"] = [Node(**n) for n in d.get("nodes", [])]
        return cls(**d)


def check_trainable(trees: list[Tree], where: str, allow_test: bool = False) -> None:
    """Refuse to build training data from trees searched on test problems (their terminals are
    labelled by the verifier, so the test set would leak into training)."""
    from sharpen.core.errors import ConfigError

    test = [t.problem_id for t in trees if t.split == "test"]
    if test and not allow_test:
        raise ConfigError(
            f"{where}: {len(test)} of {len(trees)} trees were searched on test-split problems (e.g. {test[0]!r}); "
            "training on them leaks the test set (fix: collect with `sharpen search --collect`, which searches "
            "the training split, or pass --allow-test-split if you mean it)"
        )
